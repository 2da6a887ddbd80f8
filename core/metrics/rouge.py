"""ROUGE as the host scores it: F-measures between texts normalised the host's way.

Used for the validation report and, during generation, by minimum-Bayes-risk selection
(core/decode/generation.py), so both judge an answer by the same measure.
"""

from __future__ import annotations

import functools
import logging
import string
import unicodedata

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_PUNCTUATION = set(string.punctuation)


def normalise(text: str) -> str:
    """The host's scoring normalisation: lower-case, punctuation removed, paragraph breaks and
    all other runs of whitespace made one space."""
    kept = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION and not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


@functools.lru_cache(maxsize=2)
def _scorer(types: tuple[str, ...] = ROUGE_TYPES):
    from rouge_score import rouge_scorer

    # rouge_score logs "Using default tokenizer." at INFO through absl on every scorer it makes
    logging.getLogger("absl").setLevel(logging.WARNING)
    return rouge_scorer.RougeScorer(list(types), use_stemmer=False)


def rouge_by_row(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F-measures of each pair of texts, both normalised as the host does."""
    scorer = _scorer()
    by_row: dict[str, list[float]] = {name: [] for name in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(normalise(reference), normalise(prediction))
        for name in ROUGE_TYPES:
            by_row[name].append(scores[name].fmeasure)
    return by_row


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures over pairs of texts, both normalised as the host does."""
    n = max(len(predictions), 1)
    return {name: sum(values) / n for name, values in rouge_by_row(predictions, references).items()}


def rouge_l_matrix(texts: list[str]) -> list[list[float]]:
    """Pairwise ROUGE-L F-measures of normalised texts (symmetric; 1.0 on the diagonal)."""
    scorer = _scorer(("rougeL",))
    normalised = [normalise(t) for t in texts]
    n = len(texts)
    matrix = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i][j] = matrix[j][i] = scorer.score(normalised[i], normalised[j])["rougeL"].fmeasure
    return matrix

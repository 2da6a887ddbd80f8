"""ROUGE as the host scores it: F-measures between texts normalised the host's way.

Used for the validation report and, during generation, by minimum-Bayes-risk selection
(core/decode/generation.py), so both judge an answer by the same measure. Also what "an answer that
loops" means (`has_loop`), for the report's loop share.
"""
from __future__ import annotations

import functools

from core.data import normalise

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# An answer loops when a run of this many words (normalised) occurs in it twice. Clinicians
# rarely do that: 2% of the 240 real development answers repeat a 6-word run, 17% a 4-word one.
LOOP_WORDS = 6


@functools.lru_cache(maxsize=2)
def _scorer(types: tuple[str, ...] = ROUGE_TYPES):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), use_stemmer=False)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures over pairs of texts, both normalised as the host does."""
    scorer = _scorer()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(normalise(reference), normalise(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = max(len(predictions), 1)
    return {name: total / n for name, total in totals.items()}


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


def has_loop(text: str, words: int = LOOP_WORDS) -> bool:
    """Whether some run of `words` consecutive words occurs twice in the normalised text."""
    tokens = normalise(text).split()
    seen = set()
    for i in range(len(tokens) - words + 1):
        run = tuple(tokens[i : i + words])
        if run in seen:
            return True
        seen.add(run)
    return False


def loop_share(texts: list[str]) -> float:
    """The share of texts that loop (has_loop)."""
    return sum(map(has_loop, texts)) / len(texts) if texts else 0.0


def cut_at_first_loop(text: str, words: int = LOOP_WORDS) -> str:
    """The text up to where it first repeats a run of `words` words (compared normalised): what an
    answer keeps when the search that wrote it could not apply the repetition rules itself."""
    pieces = text.split()
    seen, kept = set(), []  # kept: (piece index, normalised word) of the pieces that hold a word
    for index, piece in enumerate(pieces):
        word = normalise(piece)
        if not word:
            continue
        kept.append((index, word))
        if len(kept) >= words:
            run = tuple(w for _, w in kept[-words:])
            if run in seen:
                return " ".join(pieces[: kept[-words][0]])
            seen.add(run)
    return text

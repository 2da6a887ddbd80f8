"""The answer length, chosen on the validation split.

Real clinicians' answers are about 110 words; how many tokens a model should write to score best
depends on the model, its training and its decoding, and the synthetic sample chose badly
(docs/quality.md). So predict answers the validation rows at the longest length of
`generation.length_grid`, scores each grid length by cutting every answer there (the tokens
after it dropped), keeps the best, and answers the test rows at that length: no token is decoded
past it, and at length 0 the model is not asked (the answer is its prefix alone). Greedy answers
at a length are the longer answers cut there; beam search at a length may keep other beams than
the longer search did (docs/quality.md measured the choice both ways). With no validation rows,
or an empty grid, the length is `generation.max_new_tokens`, and the record says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from core.config import GenerationConfig, derive
from core.decode.results import Generations
from core.metrics.echo import answer_prefix
from core.metrics.rouge import rouge
from core.predictions import Prediction
from core.prompts import join_answer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LengthChoice:
    max_new_tokens: int
    chosen_by: str  # "validation ROUGE-L", or why params.yaml's max_new_tokens was used
    rougeL_by_length: dict[int, float] = field(default_factory=dict)  # each grid length's validation ROUGE-L

    def as_record(self) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens,
            "chosen_by": self.chosen_by,
            "rougeL_by_length": {str(n): score for n, score in self.rougeL_by_length.items()},
        }


def cut(answers: Generations, length: int, decode: Callable[[list[int]], str]) -> list[Prediction]:
    """Each answer cut after `length` new tokens; an answer that ended sooner stays as it was."""
    predictions = []
    prefixes = answers.prefixes or [""] * len(answers.texts)
    for text, ids, stopped, prefix in zip(answers.texts, answers.token_ids, answers.stopped, prefixes, strict=True):
        if len(ids) <= length:
            predictions.append(Prediction(text, len(ids), stopped))
        else:
            predictions.append(Prediction(join_answer(prefix, decode(ids[:length])), length, False))
    return predictions


def choose_length(
    answers: Generations, references: list[str], generation: GenerationConfig, decode: Callable[[list[int]], str]
) -> LengthChoice:
    """The grid length whose cut answers score the best validation ROUGE-L (the shorter on a tie)."""
    if not references:
        return LengthChoice(generation.max_new_tokens, "params: no validation rows (data.val_fraction is 0)")
    if not generation.length_grid:
        return LengthChoice(generation.max_new_tokens, "params: generation.length_grid is empty")
    scores = {}
    for length in sorted(set(generation.length_grid)):
        texts = [p.text for p in cut(answers, length, decode)]
        scores[length] = rouge(texts, references)["rougeL"]
    best = max(scores, key=lambda n: (scores[n], -n))
    log.info(
        "answer length %d tokens, chosen on validation ROUGE-L (%s)",
        best,
        ", ".join(f"{n}: {s:.4f}" for n, s in scores.items()),
    )
    return LengthChoice(best, "validation ROUGE-L", scores)


def for_answering(generation: GenerationConfig, validation_rows: int) -> GenerationConfig:
    """The decoding to generate with: up to the grid's longest length where a choice will be made,
    else only up to max_new_tokens (no need to generate what would be cut)."""
    return generation if validation_rows else derive(generation, "no validation rows", length_grid=[])


def for_test(decoding: GenerationConfig, length: int) -> GenerationConfig:
    """The decoding for the test rows: up to the chosen length, no further."""
    return derive(decoding, "the length chosen on validation", length_grid=[], max_new_tokens=length)


def prefix_alone(rows: list[dict], prefix_kind: str) -> Generations:
    """Answers of length 0: each row's answer prefix and no model token, made without the model."""
    prefixes = [answer_prefix(row, prefix_kind) for row in rows]
    return Generations(
        texts=list(prefixes),
        new_tokens=[0] * len(rows),
        stopped=[False] * len(rows),
        seconds=0.0,
        token_ids=[[] for _ in rows],
        prefixes=prefixes,
    )

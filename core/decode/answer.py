"""`generate_responses`: a loaded model answers rows with the prompt training used.

The entry point of answering with PyTorch. It takes a BaseUnslothModel (core/models/base.py) and
works on it from outside, so that core/models never imports decoding: an edit here reruns the
answering stages, never fine-tuning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.config import GenerationConfig
from core.data import ID
from core.decode.generation import generate
from core.decode.length import prefix_alone
from core.decode.request import DecodeRequest
from core.decode.results import Generations
from core.metrics.echo import answer_prefix
from core.prompts import fit_to_window

if TYPE_CHECKING:
    from core.models.base import BaseUnslothModel


def generate_responses(model: BaseUnslothModel, rows: list[dict], generation: GenerationConfig) -> Generations:
    """Answer `rows` with the prompt training used, batched (core/decode/generation.py): greedy,
    sampled or beam search, with MBR selection among candidates if configured."""
    if generation.longest_answer == 0:  # the answer prefix alone: nothing for the model to write
        return prefix_alone(rows, generation.answer_prefix)
    model.load()
    model.backend.for_inference(model.model)
    prefix_texts = [answer_prefix(row, generation.answer_prefix) for row in rows]
    # an answer's prefix is encoded apart from the prompt, as training encodes the answer; an
    # over-long vignette is cut to the window the model was tuned in, as in training, rather
    # than run past it (and for minutes on a CPU)
    encoded, prefix_ids = fit_to_window(
        [model.encode(model.prompt_for(row)) for row in rows],
        [model.encode(text) if text else [] for text in prefix_texts],
        generation.longest_answer,
        model.profile.max_seq_length,
        [str(row.get(ID, i + 1)) for i, row in enumerate(rows)],
    )
    request = DecodeRequest(
        prompts=[ids + prefix for ids, prefix in zip(encoded, prefix_ids, strict=True)],
        prefixes=list(zip(prefix_texts, prefix_ids, strict=True)),
        generation=generation,
        stop_id=model.stop_id,
        pad_id=model.tokenizer.pad_token_id,
    )
    return generate(model, request)

"""Batched generation: batch sizing against GPU memory, greedy, sampled or beam decoding over
left-padded batches, and minimum-Bayes-risk (MBR) selection among candidates.

core/decode/answer.py (`generate_responses`) prepares the prompts as one DecodeRequest
(core/decode/request.py) and calls `generate`, which hands it, batch by batch, to the decoder.
Greedy and beam search are deterministic; sampling is seeded once per call (`generation.seed`),
so a rerun with the same rows and batch size gives the same answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from core.config import GenerationConfig
from core.decode import static_cache
from core.decode.repetition import AnswerOnlyRepetition
from core.decode.request import DecodeRequest
from core.decode.results import Generations, trim_at_stop
from core.metrics.rouge import rouge_l_matrix
from core.prompts import join_answer

if TYPE_CHECKING:
    from core.models.base import BaseUnslothModel

log = logging.getLogger(__name__)

AUTO_BATCH_ON_CPU = 16  # a CPU has no memory budget to size against; 16 rows keep its cores busy
AUTO_BATCH_MAX = 256
AUTO_MEMORY_SHARE = 0.85  # of the GPU's free memory; the rest for the allocator's fragments


def kv_cache_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values the cache holds for one token, over all layers."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize


def rows_per_batch(
    request: DecodeRequest, config, dtype: torch.dtype, free_bytes: int | None, prompt_shared: bool = False
) -> int:
    """Rows to generate at once: the decoding's `batch_size` if it is a number; for "auto", as many as
    `free_bytes` of GPU memory hold (AUTO_BATCH_ON_CPU without a GPU), spread evenly over the
    batches so that the last is not a small remainder. A row carries `sequences_per_row`
    sequences (its beams or MBR candidates), each with its own cache; `prompt_shared`: the static
    cache's layout, one copy of a prompt for all its sequences, allocated whole."""
    g, n_rows, sequences_per_row = request.generation, len(request.prompts), request.generation.sequences_per_row
    longest_prompt, max_new_tokens = request.longest_prompt, request.longest_answer
    if g.batch_size != "auto":
        return g.batch_size
    if free_bytes is None:
        fit = AUTO_BATCH_ON_CPU
    else:
        # A sequence's KV cache at full length, counted twice where the cache grows by
        # concatenation (old and new copies coexist and the allocator cannot reuse the outgrown
        # blocks), once where it is allocated whole (core/decode/static_cache.py), where a row's beams also
        # share one copy of its prompt. Plus the last position's logits in float32, about three
        # copies while sampling or choosing beams.
        per_token = kv_cache_bytes_per_token(config, dtype)
        if prompt_shared:
            per_row = (longest_prompt + sequences_per_row * max_new_tokens) * per_token
        else:
            per_row = 2 * (longest_prompt + max_new_tokens) * per_token * sequences_per_row
        per_row += sequences_per_row * 3 * 4 * config.vocab_size
        fit = int(free_bytes * AUTO_MEMORY_SHARE) // per_row
    fit = max(1, min(fit, AUTO_BATCH_MAX, n_rows))
    return math.ceil(n_rows / math.ceil(n_rows / fit)) if n_rows else fit


def mbr_choice(candidates: list[str]) -> int:
    """The index of the candidate with the highest mean ROUGE-L against all the others: the
    one the others agree with most (minimum Bayes risk under the task's own metric). Ties go to
    the earlier candidate, which for beams is the one the model scored higher."""
    if len(candidates) < 2:
        return 0
    matrix = rouge_l_matrix(candidates)
    n = len(candidates)
    expected = [sum(matrix[i][j] for j in range(n) if j != i) / (n - 1) for i in range(n)]
    return max(range(n), key=lambda i: (expected[i], -i))


def answer_only_rules(generation: GenerationConfig, answer_begins: list[int]) -> list[AnswerOnlyRepetition]:
    """The logits processors for generate() that apply the repetition rules to the answer only
    (`answer_begins`: the column of each row of the left-padded batch where its answer starts)."""
    g = generation
    if g.repetition_penalty == 1.0 and not g.no_repeat_ngram_size:
        return []
    return [AnswerOnlyRepetition(answer_begins, g.repetition_penalty, g.no_repeat_ngram_size)]


def generate_kwargs(generation: GenerationConfig) -> dict:
    """The keyword arguments of transformers' generate() that the configuration asks for."""
    g = generation
    settings = {
        "do_sample": g.do_sample,
        # transformers' own rules would count the prompt's tokens: ours (answer_only_rules) replace them
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "min_new_tokens": g.min_new_tokens or None,
        "num_return_sequences": g.mbr_candidates or 1,
    }
    beams = g.num_beams if g.do_sample else g.sequences_per_row
    if beams > 1:
        settings.update(num_beams=beams, length_penalty=g.length_penalty, early_stopping=g.early_stopping)
    else:
        settings.update(num_beams=1)
    if g.do_sample:
        settings.update(temperature=g.temperature, top_p=g.top_p)
    else:  # unset sampling knobs a checkpoint's generation_config may carry, so greedy stays greedy
        settings.update(temperature=None, top_p=None, top_k=None)
    return settings


@torch.inference_mode()
def generate(model: BaseUnslothModel, request: DecodeRequest) -> Generations:
    """Answer every row of `request` with the loaded `model`, in batches of similar length. Each prompt
    ends with its answer's prefix (generation.answer_prefix); the model writes on from there and the
    repetition rules count it.

    With ``batch_size: auto`` the batch is sized to the GPU's free memory, and a batch that
    still runs out of memory is halved and retried; a pinned batch size is never changed.
    Greedy and beam-search decoding go through core/decode/static_cache.py (a static cache, each prompt run
    once whatever its beams; each step a CUDA graph on a GPU) where its `chosen_for` says so
    (the hf backend: the model runs transformers' own forward)."""
    g, n = request.generation, len(request.prompts)
    # Similar lengths in one batch waste less on padding; results go back in input order.
    order = sorted(range(n), key=lambda i: -len(request.prompts[i]))
    device = next(model.model.parameters()).device
    fast = static_cache.chosen_for(g, model.backend.name == "hf")
    per_row, auto = g.mbr_candidates or 1, g.batch_size == "auto"
    size = _first_batch_size(model, request, fast)
    answers: list[tuple[str, list[int], bool]] = [("", [], False)] * n  # text, new token ids, stopped
    largest = decoded = done = 0
    torch.manual_seed(g.seed)
    start = time.perf_counter()
    with tqdm(total=n, desc="generating", unit="row") as bar:
        while done < n:
            index = order[done : done + size]
            try:
                new, steps = _answer_batch(model, request.subset(index), fast)
            except torch.cuda.OutOfMemoryError:
                if not auto or size == 1:  # a pinned batch size is the user's: never changed
                    raise
                torch.cuda.empty_cache()
                size = max(1, size // 2)
                log.warning("out of GPU memory; trying again with %d rows a batch", size)
                continue
            decoded += len(index) * g.sequences_per_row * steps
            for k, i in enumerate(index):
                candidates = new[k * per_row : (k + 1) * per_row]
                answers[i] = _chosen_answer(candidates, request.prefixes[i][0], request.stop_id, model.decode)
            largest = max(largest, len(index))
            done += len(index)
            bar.update(len(index))
    return Generations(
        [text for text, _, _ in answers],
        [len(ids) for _, ids, _ in answers],
        [end for _, _, end in answers],
        time.perf_counter() - start,
        largest,
        _peak_gb(device),
        decoded,
        token_ids=[ids for _, ids, _ in answers],
        prefixes=[text for text, _ in request.prefixes],
    )


def _peak_gb(device: torch.device) -> float:
    """The most GPU memory allocated so far (0 on a CPU)."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**30


def _first_batch_size(model: BaseUnslothModel, request: DecodeRequest, fast: bool) -> int:
    """Rows a batch: generation.batch_size, or for auto as many as the GPU's free memory holds."""
    generation, device = request.generation, next(model.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.empty_cache()  # memory the allocator keeps but nothing uses counts as free
        torch.cuda.reset_peak_memory_stats(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    size = rows_per_batch(request, model.model.config, model.dtype, free, prompt_shared=fast)
    if generation.batch_size == "auto":
        log.info(
            "batch_size auto: %d rows a batch of %d sequences each (%s)",
            size,
            generation.sequences_per_row,
            f"{free / 2**30:.1f} GiB of GPU memory free" if free is not None else "no GPU",
        )
    if fast:
        log.info(
            "decoding through a static cache%s (generation.static_cache)",
            ", each step a CUDA graph" if device.type == "cuda" else "",
        )
    return size


def _chosen_answer(
    candidates: list[list[int]], prefix: str, stop_id: int, decode: Callable[[list[int]], str]
) -> tuple[str, list[int], bool]:
    """A row's answer among its candidates (one, or MBR's choice of several): its text after the
    prefix, its new token ids up to the stop token, and whether it stopped."""
    trimmed = [trim_at_stop(ids, stop_id) for ids in candidates]
    texts = [join_answer(prefix, decode(ids)) for ids, _ in trimmed]
    best = mbr_choice(texts) if len(candidates) > 1 else 0
    return texts[best], *trimmed[best]


def _answer_batch(model: BaseUnslothModel, batch: DecodeRequest, fast: bool) -> tuple[list[list[int]], int]:
    """One batch: the new token ids of each sequence (num_return_sequences a row, in row order)
    and the number of decoding steps run."""
    if fast:
        return static_cache.decode(model.model, batch)
    from transformers import LogitsProcessorList

    # left: every row's new tokens start at the same column (the side is named here, per call,
    # rather than set on a tokenizer others share)
    padded = model.tokenizer.pad({"input_ids": batch.prompts}, padding=True, padding_side="left", return_tensors="pt")
    device = next(model.model.parameters()).device
    padded = {k: v.to(device) for k, v in padded.items()}
    width = padded["input_ids"].shape[1]
    begins = [width - n for n in batch.prefix_lengths]
    output = model.model.generate(
        **padded,
        max_new_tokens=batch.longest_answer,
        eos_token_id=[batch.stop_id],
        pad_token_id=batch.pad_id,
        use_cache=True,
        logits_processor=LogitsProcessorList(answer_only_rules(batch.generation, begins)),
        **generate_kwargs(batch.generation),
    )
    return output[:, width:].tolist(), output.shape[1] - width

"""Batched generation: batch sizing against GPU memory, greedy, sampled or beam decoding over
left-padded batches, and minimum-Bayes-risk (MBR) selection among candidates.

BaseUnslothModel.generate_responses prepares the model and the prompts and calls `generate`.
Greedy and beam search are deterministic; sampling is seeded once per call (`generation.seed`),
so a rerun with the same rows and batch size gives the same answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from core.config import GenerationConfig
from core.decode import static_cache
from core.decode.repetition import AnswerOnlyRepetition
from core.decode.results import Generations, trim_at_stop
from core.metrics.rouge import rouge_l_matrix
from core.prompts import join_answer

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
    batch_size: int | str,
    n_rows: int,
    longest_prompt: int,
    max_new_tokens: int,
    config,
    dtype: torch.dtype,
    free_bytes: int | None,
    sequences_per_row: int = 1,
    prompt_shared: bool = False,
) -> int:
    """Rows to generate at once: `batch_size` if it is a number; for "auto", as many as
    `free_bytes` of GPU memory hold (AUTO_BATCH_ON_CPU without a GPU), spread evenly over the
    batches so that the last is not a small remainder. A row carries `sequences_per_row`
    sequences (its beams or MBR candidates), each with its own cache; `prompt_shared`: the static
    cache's layout, one copy of a prompt for all its sequences, allocated whole."""
    if batch_size != "auto":
        return batch_size
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
def generate(
    model,
    tokenizer,
    encoded: list[list[int]],
    stop_id: int,
    generation: GenerationConfig,
    dtype: torch.dtype,
    decode: Callable[[list[int]], str],
    transformers_forward: bool = False,
    prefixes: list[tuple[str, list[int]]] | None = None,
) -> Generations:
    """Answer every prompt in `encoded` (token ids, no padding), in batches of similar length.
    `prefixes` (text, token ids), one a row: the start of each answer, written for the model
    (generation.answer_prefix); the model writes on from there and the repetition rules count it.

    With ``batch_size: auto`` the batch is sized to the GPU's free memory, and a batch that
    still runs out of memory is halved and retried; a pinned batch size is never changed.
    Greedy and beam-search decoding go through core/decode/static_cache.py (a static cache, each prompt run
    once whatever its beams; each step a CUDA graph on a GPU) where its `chosen_for` says so
    (`transformers_forward`: the model runs transformers' own forward, as with the hf backend)."""
    prefixes = prefixes or [("", [])] * len(encoded)
    encoded = [ids + prefix for ids, (_, prefix) in zip(encoded, prefixes, strict=True)]
    # Similar lengths in one batch waste less on padding; results go back in input order.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    fast = static_cache.chosen_for(generation, transformers_forward)
    settings = generate_kwargs(generation)
    per_row, auto = settings["num_return_sequences"], generation.batch_size == "auto"
    size = _first_batch_size(model, encoded, generation, dtype, device, fast)
    n = len(encoded)
    answers: list[tuple[str, list[int], bool]] = [("", [], False)] * n  # text, new token ids, stopped
    largest = decoded = done = 0
    torch.manual_seed(generation.seed)
    start = time.perf_counter()
    with tqdm(total=n, desc="generating", unit="row") as bar:
        while done < n:
            index = order[done : done + size]
            try:
                new, steps = _answer_batch(
                    model,
                    tokenizer,
                    [encoded[i] for i in index],
                    [len(prefixes[i][1]) for i in index],
                    stop_id,
                    generation,
                    settings,
                    device,
                    fast,
                )
            except torch.cuda.OutOfMemoryError:
                if not auto or size == 1:  # a pinned batch size is the user's: never changed
                    raise
                torch.cuda.empty_cache()
                size = max(1, size // 2)
                log.warning("out of GPU memory; trying again with %d rows a batch", size)
                continue
            decoded += len(index) * generation.sequences_per_row * steps
            for k, i in enumerate(index):
                answers[i] = _chosen_answer(new[k * per_row : (k + 1) * per_row], prefixes[i][0], stop_id, decode)
            largest = max(largest, len(index))
            done += len(index)
            bar.update(len(index))
    return _as_generations(answers, prefixes, time.perf_counter() - start, largest, _peak_gb(device), decoded)


def _peak_gb(device: torch.device) -> float:
    """The most GPU memory allocated so far (0 on a CPU)."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**30


def _as_generations(
    answers: list[tuple[str, list[int], bool]],
    prefixes: list[tuple[str, list[int]]],
    seconds: float,
    largest: int,
    peak: float,
    decoded: int,
) -> Generations:
    return Generations(
        [text for text, _, _ in answers],
        [len(ids) for _, ids, _ in answers],
        [end for _, _, end in answers],
        seconds,
        largest,
        peak,
        decoded,
        token_ids=[ids for _, ids, _ in answers],
        prefixes=[text for text, _ in prefixes],
    )


def _first_batch_size(
    model, encoded: list[list[int]], generation: GenerationConfig, dtype: torch.dtype, device: torch.device, fast: bool
) -> int:
    """Rows a batch: generation.batch_size, or for auto as many as the GPU's free memory holds."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # memory the allocator keeps but nothing uses counts as free
        torch.cuda.reset_peak_memory_stats(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    longest = max((len(ids) for ids in encoded), default=0)
    size = rows_per_batch(
        generation.batch_size,
        len(encoded),
        longest,
        generation.longest_answer,
        model.config,
        dtype,
        free,
        generation.sequences_per_row,
        prompt_shared=fast,
    )
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


def _answer_batch(
    model,
    tokenizer,
    prompts: list[list[int]],
    prefix_lengths: list[int],
    stop_id: int,
    generation: GenerationConfig,
    settings: dict,
    device: torch.device,
    fast: bool,
) -> tuple[list[list[int]], int]:
    """One batch: the new token ids of each sequence (num_return_sequences a row, in row order)
    and the number of decoding steps run. Each prompt ends with its answer's prefix (`prefix_lengths` tokens)."""
    if fast:
        return static_cache.decode(
            model, prompts, prefix_lengths, stop_id, tokenizer.pad_token_id, generation, generation.longest_answer
        )
    from transformers import LogitsProcessorList

    # left: every row's new tokens start at the same column (the side is named here, per call,
    # rather than set on a tokenizer others share)
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, padding_side="left", return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    width = batch["input_ids"].shape[1]
    output = model.generate(
        **batch,
        max_new_tokens=generation.longest_answer,
        eos_token_id=[stop_id],
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        logits_processor=LogitsProcessorList(answer_only_rules(generation, [width - n for n in prefix_lengths])),
        **settings,
    )
    return output[:, width:].tolist(), output.shape[1] - width

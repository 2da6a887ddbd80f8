"""Greedy decoding through a static KV cache, the decode step replayed as a CUDA graph.

At the batch sizes predict uses, transformers' generate() spends most of a decode step in
Python and in kernel launches (about 80 ms a step for 200 rows of the Qwen3-0.6B shape on an
H100, the GPU mostly waiting), and its cache grows by concatenation, copying itself every step.
Here the cache is allocated once at its full length (transformers' StaticCache), the step's
inputs live in fixed buffers, and the whole step (embedding, every layer, the last position's
logits, the answer-only repetition rules of core/repetition.py, the argmax) is captured once as a CUDA graph and then replayed:
one launch a token. Decoding ends when every row has emitted the stop token; once at most half
of a batch is still going, the finished rows are dropped (their cache rows gathered away and the
graph captured again for the smaller batch).

Attention during decode steps folds a grouped-query model's query heads onto their shared
key/value heads (`_grouped_decode_attention`): transformers' sdpa path, given a padding mask,
copies every key and value once per query head that shares it (repeat_kv), which at 200 rows was
half of each step's time.

The model is called as generate() calls it (left padding, positions counted from each row's
first real token, the attention mask as a tensor), so greedy answers are the same tokens:
tests/test_model.py checks it on a CPU without graphs, tests/test_gpu.py on a GPU with them.
Only greedy decoding (optionally with the answer-only repetition penalty and n-gram rule) goes
this way; sampling, beams, MBR and minimum lengths stay with generate() (core/generation.py decides).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from core.config import GenerationConfig
from core.repetition import penalise, repeated_ngram_bans

log = logging.getLogger(__name__)

GROUPED_ATTENTION = "kcr_grouped_decode"  # registered with transformers' AttentionInterface

EAGER_STEPS = 2  # decode steps run eagerly before a capture: lazy initialisations (cuBLAS handles, workspaces)
CHECK_EVERY = 8  # steps between looks at which rows have finished (each look waits for the GPU)
SHRINK_BELOW = 0.5  # drop finished rows once this share of the batch or less is still going
SMALLEST_BATCH = 8  # below this many rows a smaller graph saves too little to recapture


def applies_to(generation: GenerationConfig) -> bool:
    """Whether this decoder can produce what `generation` asks for: greedy, one sequence a row."""
    g = generation
    return not g.do_sample and g.num_beams == 1 and not g.mbr_candidates and not g.min_new_tokens


def _grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa attention, except for a one-token query of a grouped-query model: its
    query heads [batch, heads, 1, dim] are folded to [batch, kv_heads, heads per kv head, dim], so
    that each key/value head is read where it is, not copied once per query head. The query
    heads that share a key/value head are consecutive (as repeat_kv lays them out); the mask
    [batch, 1, 1, keys] is the same for all of them."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if length != 1 or heads == kv_heads or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    folded = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


@contextmanager
def _grouped_attention(model):
    """The model's sdpa attention replaced by _grouped_decode_attention while decoding."""
    config = model.config
    if config._attn_implementation != "sdpa":
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_ATTENTION, _grouped_decode_attention)
    config._attn_implementation = GROUPED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


class _Batch:
    """The decoding state of the rows still going: fixed-address buffers the graph reads and writes."""

    def __init__(self, model, prompts: list[list[int]], pad_id: int, max_new_tokens: int, penalty: float,
                 ngram_size: int, device: torch.device) -> None:
        from transformers import StaticCache

        self.model, self.penalty, self.ngram_size = model, penalty, ngram_size
        n, width = len(prompts), max(len(p) for p in prompts)
        self.prompt_width, self.length = width, width + max_new_tokens
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        real = torch.zeros((n, width), dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            real[i, width - len(prompt):] = True
        self.ids, self.real = ids.to(device), real.to(device)
        self.rows = torch.arange(n, device=device)  # which input row each batch row is
        self.cache = StaticCache(config=model.config, max_cache_len=self.length)
        # keys each row may attend to: its real prompt tokens now, each new token as it is written
        self.keys = torch.zeros((n, 1, 1, self.length), dtype=torch.bool, device=device)
        self.keys[:, 0, 0, :width] = self.real
        lengths = self.real.sum(1)
        self.position = lengths.unsqueeze(1).clone()  # the position of the next token (the first new one: the prompt's length)
        self.token = torch.zeros((n, 1), dtype=torch.long, device=device)
        self.finished = torch.zeros(n, dtype=torch.bool, device=device)
        vocab = model.config.get_text_config().vocab_size
        # the repetition rules see the answer's tokens only: `seen` and `history` start empty
        self.seen = torch.zeros((n, vocab), dtype=torch.bool, device=device) if penalty != 1.0 else None
        self.history = torch.zeros((n, max_new_tokens), dtype=torch.long, device=device) if ngram_size else None
        self.written = torch.zeros((), dtype=torch.long, device=device)  # answer tokens in `history` (read inside the graph)

    def prefill(self) -> torch.Tensor:
        """Run the prompts, filling the cache; returns the first new token of each row."""
        width = self.prompt_width
        causal = torch.ones((width, width), dtype=torch.bool, device=self.ids.device).tril()
        mask = torch.zeros((len(self.ids), 1, width, self.length), dtype=torch.bool, device=self.ids.device)
        mask[:, 0, :, :width] = causal & self.real[:, None, :]
        # a padding position attends to nothing and sdpa would fill it with NaN, which masked
        # keys still carry into sums (0 x NaN): let it see itself; no real token ever sees it
        mask[:, 0, :, :width] |= torch.eye(width, dtype=torch.bool, device=self.ids.device) & ~self.real[:, None, :]
        positions = (self.real.long().cumsum(1) - 1).masked_fill(~self.real, 1)
        logits = self.model(input_ids=self.ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1].float()
        return self._choose(logits)

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            logits = penalise(logits, self.seen, self.penalty)
        if self.history is not None:
            bans = repeated_ngram_bans(self.history, self.written, self.ngram_size, logits.shape[-1])
            logits = logits.masked_fill(bans, -float("inf"))
        return logits.argmax(-1)

    def step(self) -> None:
        """One decode step on the buffers: reads token, position and keys; writes token."""
        logits = self.model(input_ids=self.token, attention_mask=self.keys, position_ids=self.position,
                            past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        self.token.copy_(self._choose(logits).unsqueeze(1))

    def record(self, slot: int, stop_id: int) -> None:
        """Book the token in `token` (chosen by the last step; the next step writes it into cache
        slot `slot`): its row may have finished, its slot becomes visible, the penalty sees it."""
        self.finished |= self.token.view(-1) == stop_id
        self.keys[:, 0, 0, slot] = True
        if self.seen is not None:
            self.seen.scatter_(1, self.token, True)
        if self.history is not None:
            self.history[:, slot - self.prompt_width] = self.token.view(-1)
        self.written.add_(1)

    def advance(self) -> None:
        self.position.add_(1)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in `index` (new tensors: a graph must be captured again)."""
        for name in ("rows", "keys", "position", "token", "finished", "seen", "history"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
            layer.batch_size = len(index)


@torch.inference_mode()
def greedy_decode(model, prompts: list[list[int]], stop_id: int, pad_id: int, max_new_tokens: int,
                  repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                  graphs: bool | None = None) -> tuple[list[list[int]], int]:
    """Greedy answers to `prompts` (token ids, unpadded) in one batch: for each row the new token
    ids (up to its stop token; after that, anything), and the number of steps run. `graphs`:
    capture the decode step as a CUDA graph (default: on a CUDA device)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers live in it
    device = next(inner.parameters()).device
    graphs = device.type == "cuda" if graphs is None else graphs
    with _grouped_attention(inner):
        batch = _Batch(inner, prompts, pad_id, max_new_tokens, repetition_penalty, no_repeat_ngram_size, device)
        return _run(batch, len(prompts), stop_id, pad_id, max_new_tokens, graphs, device)


def _run(batch: _Batch, n: int, stop_id, pad_id, max_new_tokens, graphs, device):
    out = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    batch.token.copy_(batch.prefill().unsqueeze(1))
    out[:, 0] = batch.token.view(-1)
    batch.record(batch.prompt_width, stop_id)
    graph, eager_left, steps = None, EAGER_STEPS, 1
    for t in range(1, max_new_tokens):
        if t % CHECK_EVERY == 0:
            going = (~batch.finished).nonzero().view(-1)
            if len(going) == 0:
                break
            if len(going) <= SHRINK_BELOW * len(batch.rows) and len(batch.rows) >= SMALLEST_BATCH:
                log.debug("step %d: %d of %d rows still going; the batch shrinks to them", t, len(going), len(batch.rows))
                batch.keep(going)
                graph, eager_left = None, EAGER_STEPS if graphs else 0
        if not graphs or eager_left > 0:
            if graphs:  # warm-up steps run on a side stream, as capture wants
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    batch.step()
                torch.cuda.current_stream(device).wait_stream(side)
                eager_left -= 1
            else:
                batch.step()
        else:
            if graph is None:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    batch.step()
            graph.replay()
        batch.advance()
        out[batch.rows, t] = batch.token.view(-1)
        batch.record(batch.prompt_width + t, stop_id)
        steps += 1
    return out[:, :steps].tolist(), steps

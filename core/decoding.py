"""Greedy and beam-search decoding through a static KV cache, each step replayed as a CUDA graph.

At the batch sizes predict uses, transformers' generate() spends most of a decode step in
Python and in kernel launches (about 80 ms a step for 200 rows of the Qwen3-0.6B shape on an
H100, the GPU mostly waiting), its cache grows by concatenation, copying itself every step, and
beam search runs each prompt once per beam. Here the cache is allocated once at its full length
(transformers' StaticCache), each prompt runs once and its cache rows are copied to its beams,
the step's inputs live in fixed buffers, and the whole step (embedding, every layer, the last
position's logits, the answer-only repetition rules of core/repetition.py, the choice of tokens:
argmax, or core/beam_search.py's selection and the reorder of the beams' cache rows) is captured
once as a CUDA graph and then replayed: one launch a token. Only the generated part of the cache
is reordered: the prompt's part is the same in every beam of a prompt. Decoding ends when every
prompt is done (greedy: its stop token; beams: its finished answers can no longer change); once at
most half of a batch is still going, the finished prompts are dropped (their cache rows gathered
away and the graph captured again for the smaller batch). On a CPU the same steps run eagerly.

Attention during decode steps folds a grouped-query model's query heads onto their shared
key/value heads (`_grouped_decode_attention`): transformers' sdpa path, given a padding mask,
copies every key and value once per query head that shares it (repeat_kv), which at 200 rows was
half of each step's time.

The model is called as generate() calls it (left padding, positions counted from each row's
first real token, the attention mask as a tensor), the rules see the same tokens (the answer's
prefix and what was generated), and beams are chosen by generate()'s arithmetic, so the answers
are the same tokens: tests/test_model.py checks it on a CPU without graphs, tests/test_gpu.py on
a GPU with them. Sampling and minimum lengths stay with generate() (core/generation.py decides).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from core.beam_search import BeamState
from core.config import GenerationConfig
from core.repetition import penalise, repeated_ngram_bans

log = logging.getLogger(__name__)

GROUPED_ATTENTION = "kcr_grouped_decode"  # registered with transformers' AttentionInterface

EAGER_STEPS = 2  # decode steps run eagerly before a capture: lazy initialisations (cuBLAS handles, workspaces)
CHECK_EVERY = 8  # steps between looks at which rows have finished (each look waits for the GPU)
SHRINK_BELOW = 0.5  # drop finished rows once this share of the batch or less is still going
SMALLEST_BATCH = 8  # below this many rows a smaller graph saves too little to recapture


def applies_to(generation: GenerationConfig) -> bool:
    """Whether this decoder can produce what `generation` asks for: greedy or beam search, no
    minimum length (the N best beams for MBR included; sampling is generate()'s)."""
    g = generation
    return not g.do_sample and not g.min_new_tokens


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
    """The decoding state of the prompts still going (`beams` rows each, consecutive): fixed-address
    buffers that the graph reads and writes."""

    def __init__(self, model, prompts: list[list[int]], prefix_lengths: list[int], pad_id: int, stop_id: int,
                 generation: GenerationConfig, max_new_tokens: int, device: torch.device) -> None:
        from transformers import StaticCache

        g = generation
        self.model, self.stop_id, self.max_new_tokens = model, stop_id, max_new_tokens
        self.penalty, self.ngram_size = g.repetition_penalty, g.no_repeat_ngram_size
        self.beams = g.sequences_per_row
        n, width, k = len(prompts), max(len(p) for p in prompts), self.beams
        self.prompt_width, self.length = width, width + max_new_tokens
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        real = torch.zeros((n, width), dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            real[i, width - len(prompt):] = True
        self.ids, self.real = ids.to(device), real.to(device)
        self.prompts = torch.arange(n, device=device)  # which input prompt each group of rows answers
        self.cache = StaticCache(config=model.config, max_cache_len=self.length)
        # keys each row may attend to: its real prompt tokens now, each new token as it is written
        self.keys = torch.zeros((n * k, 1, 1, self.length), dtype=torch.bool, device=device)
        self.keys[:, 0, 0, :width] = self.real.repeat_interleave(k, 0)
        # the position of the token in `token` (the first new one: the prompt's length)
        self.position = self.real.sum(1, keepdim=True).repeat_interleave(k, 0)
        self.token = torch.zeros((n * k, 1), dtype=torch.long, device=device)
        # the answer as the repetition rules see it: its prefix (the end of the prompt, right-aligned
        # in `prefix_width` columns, from column `begin`), then each new token
        self.prefix_width = max(prefix_lengths, default=0)
        self.answer = torch.full((n, self.prefix_width + max_new_tokens), pad_id, dtype=torch.long)
        begin = torch.zeros((n, 1), dtype=torch.long)
        for i, (prompt, m) in enumerate(zip(prompts, prefix_lengths, strict=True)):
            if m:
                self.answer[i, self.prefix_width - m: self.prefix_width] = torch.tensor(prompt[-m:], dtype=torch.long)
            begin[i] = self.prefix_width - m
        self.answer = self.answer.to(device).repeat_interleave(k, 0)
        self.begin = begin.to(device).repeat_interleave(k, 0)
        self.written = torch.zeros((), dtype=torch.long, device=device)  # new tokens chosen so far (read inside the graph)
        self.seen = None
        if self.penalty != 1.0:
            vocab = model.config.get_text_config().vocab_size
            inside = (torch.arange(self.prefix_width, device=device) >= self.begin).float()
            self.seen = torch.zeros((n * k, vocab), device=device).scatter_add_(1, self.answer[:, : self.prefix_width], inside) > 0
        self.search = (BeamState(n, k, max_new_tokens, stop_id, pad_id, g.length_penalty, g.early_stopping, device)
                       if k > 1 else None)
        self.finished = torch.zeros(n, dtype=torch.bool, device=device)  # greedy: the stop token written
        # cache columns a beam reorder copies: the generated part (a graph copies all of it)
        self.reorder_until = self.length

    def prefill(self) -> None:
        """Run each prompt once, fill the cache (copied to the prompt's beams) and choose the first token."""
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
        if self.beams > 1:
            for layer in self.cache.layers:
                layer.keys = layer.keys.repeat_interleave(self.beams, 0)
                layer.values = layer.values.repeat_interleave(self.beams, 0)
                layer.batch_size = len(layer.keys)
            logits = logits.repeat_interleave(self.beams, 0)
        self._choose(logits)

    def step(self) -> None:
        """One decode step on the buffers: feeds `token`, chooses the next."""
        logits = self.model(input_ids=self.token, attention_mask=self.keys, position_ids=self.position,
                            past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        self.position.add_(1)
        self._choose(logits)

    def _rules(self, scores: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            scores = penalise(scores, self.seen, self.penalty)
        if self.ngram_size:
            bans = repeated_ngram_bans(self.answer, self.prefix_width + self.written, self.ngram_size, scores.shape[-1],
                                       self.begin)
            scores = scores.masked_fill(bans, -float("inf"))
        return scores

    def _choose(self, logits: torch.Tensor) -> None:
        """The next token of every row (greedy: the rules on the logits, as generate() applies
        them; beams: on the log-probabilities, then the selection), booked in the buffers."""
        if self.search is None:
            token = self._rules(logits).argmax(-1)
            self.finished |= token == self.stop_id
        else:
            rows, token = self.search.select(self._rules(torch.log_softmax(logits, -1)), self.written)
            self._reorder(rows)
        self.token.copy_(token.unsqueeze(1))
        self.answer.scatter_(1, (self.prefix_width + self.written).expand(len(token), 1), self.token)
        if self.seen is not None:
            self.seen.scatter_(1, self.token, True)
        # the new token goes into cache slot prompt_width + written at the next step: let it be seen
        self.keys.index_fill_(3, (self.prompt_width + self.written).view(1), True)
        self.written.add_(1)

    def _reorder(self, rows: torch.Tensor) -> None:
        """Each beam takes over the generated cache, answer and seen tokens of the row it continues."""
        for layer in self.cache.layers:
            for cache in (layer.keys, layer.values):
                generated = cache[:, :, self.prompt_width: self.reorder_until]
                generated.copy_(generated.index_select(0, rows))
        self.answer.copy_(self.answer.index_select(0, rows))
        if self.seen is not None:
            self.seen.copy_(self.seen.index_select(0, rows))

    def done(self) -> torch.Tensor:
        """[prompts] bool: the prompts whose answers can no longer change."""
        return self.finished if self.search is None else self.search.done()

    def answers(self, count: int) -> torch.Tensor:
        """[prompts, count, max_new] each prompt's answers so far (greedy: one)."""
        if self.search is None:
            return self.answer[:, None, self.prefix_width:]
        return self.search.answers(count)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the prompts in `index` (new tensors: a graph must be captured again)."""
        rows = (index[:, None] * self.beams + torch.arange(self.beams, device=index.device)).view(-1)
        self.prompts, self.finished = self.prompts.index_select(0, index), self.finished.index_select(0, index)
        for name in ("keys", "position", "token", "answer", "begin", "seen"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, rows))
        if self.search is not None:
            self.search.keep(index)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)
            layer.batch_size = len(rows)


@torch.inference_mode()
def decode(model, prompts: list[list[int]], prefix_lengths: list[int], stop_id: int, pad_id: int,
           generation: GenerationConfig, max_new_tokens: int, graphs: bool | None = None) -> tuple[list[list[int]], int]:
    """Answers to `prompts` (token ids, unpadded; each ends with its answer's prefix,
    `prefix_lengths` tokens) in one batch, greedy or by beam search as `generation` says:
    num_return_sequences lists of new token ids a prompt, best first (each up to its stop token;
    after that, anything), and the number of steps run. `graphs`: capture the decode step as a
    CUDA graph (default: on a CUDA device)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers live in it
    device = next(inner.parameters()).device
    graphs = device.type == "cuda" if graphs is None else graphs
    with _grouped_attention(inner):
        batch = _Batch(inner, prompts, prefix_lengths, pad_id, stop_id, generation, max_new_tokens, device)
        return _run(batch, generation.mbr_candidates or 1, graphs, device)


def _run(batch: _Batch, returned: int, graphs: bool, device: torch.device):
    n, max_new_tokens = len(batch.prompts), batch.max_new_tokens
    out = torch.full((n, returned, max_new_tokens), -1, dtype=torch.long, device=device)
    batch.prefill()
    graph, eager_left, steps = None, EAGER_STEPS, 1
    for t in range(1, max_new_tokens):
        if t % CHECK_EVERY == 0:
            done = batch.done()
            going = (~done).nonzero().view(-1)
            if len(going) == 0:
                break
            if len(going) <= SHRINK_BELOW * len(batch.prompts) and len(batch.prompts) * batch.beams >= SMALLEST_BATCH:
                log.debug("step %d: %d of %d prompts still going; the batch shrinks to them", t, len(going), len(batch.prompts))
                ended = done.nonzero().view(-1)
                out[batch.prompts[ended]] = batch.answers(returned).index_select(0, ended)
                batch.keep(going)
                graph, eager_left = None, EAGER_STEPS if graphs else 0
        if not graphs:
            batch.reorder_until = batch.prompt_width + t  # eagerly, only the columns written so far
            batch.step()
        elif eager_left > 0:  # warm-up steps run on a side stream, as capture wants
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                batch.step()
            torch.cuda.current_stream(device).wait_stream(side)
            eager_left -= 1
        else:
            if graph is None:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    batch.step()
            graph.replay()
        steps += 1
    out[batch.prompts] = batch.answers(returned)
    return [ids[:steps] for ids in out.view(n * returned, max_new_tokens).tolist()], steps

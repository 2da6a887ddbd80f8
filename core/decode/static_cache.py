"""Greedy and beam-search decoding through a static KV cache, each step replayed as a CUDA graph.

At the batch sizes predict uses, transformers' generate() spends most of a decode step in Python and
in kernel launches, the GPU mostly waiting (docs/benchmarks.md), its cache grows by concatenation,
copying itself every step, and beam search runs each prompt once per beam. Here the cache is
allocated once at its full length (transformers' StaticCache), each prompt runs once and its cache
rows are copied to its beams, the step's inputs live in fixed buffers, and the whole step
(embedding, every layer, the last position's logits, the answer-only repetition rules of
core/decode/repetition.py, the choice of tokens: argmax, or core/decode/beam_search.py's selection
and the copy of forked beams' cache rows) is captured once as a CUDA graph and then replayed: one
launch a token. A beam stays in its row while it continues itself (rows are assigned as beams go on,
generate()'s beam order kept apart), so a step copies only the forked beams' generated columns
(core/decode/kernels.py); the prompt's part of the cache is the same in every beam of a prompt and
never moves. Decoding ends when every prompt is done (greedy: its stop token; beams: its finished
answers can no longer change); once at most half of a batch is still going, the finished prompts are
dropped (their cache rows gathered away and the graph captured again for the smaller batch). On a
CPU the same steps run eagerly.

Attention during decode steps folds a grouped-query model's query heads onto their shared
key/value heads (`_grouped_decode_attention`): transformers' sdpa path, given a padding mask,
copies every key and value once per query head that shares it (repeat_kv), which at 200 rows was
half of each step's time.

The model is called as generate() calls it (left padding, positions counted from each row's
first real token, the attention mask as a tensor), the rules see the same tokens (the answer's
prefix and what was generated), and beams are chosen by generate()'s arithmetic, so the answers
are the same tokens: tests/test_model.py checks it on a CPU without graphs, tests/test_gpu.py on
a GPU with them. Sampling and minimum lengths stay with generate() (core/decode/generation.py decides).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from core.config import GenerationConfig
from core.decode.beam_search import BeamState, assign_rows
from core.decode.kernels import copy_rows
from core.decode.repetition import penalise, repeated_ngram_bans

log = logging.getLogger(__name__)

GROUPED_ATTENTION = "kcr_grouped_decode"  # registered with transformers' AttentionInterface

EAGER_STEPS = 2  # decode steps run eagerly before a capture: lazy initialisations (cuBLAS handles, workspaces)
CHECK_EVERY = 8  # steps between looks at which rows have finished (each look waits for the GPU)
SHRINK_BELOW = 0.5  # drop finished rows once this share of the batch or less is still going
SMALLEST_BATCH = 8  # below this many rows a smaller graph saves too little to recapture
# beams: generated columns the attention reads, rounded up to a multiple of this (a graph each):
# not the whole answer's length from the first token on
GENERATED_BUCKET = 64


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
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    folded = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


class _SharedPrompt:
    """Beam search's prompts' keys and values, one copy a prompt (not one a beam), by layer:
    every beam of a prompt reads the same prompt; only what each beam generated is its own."""

    def __init__(self, beams: int, width: int) -> None:
        self.beams, self.width = beams, width
        self.keys: list[torch.Tensor] | None = None  # [prompts, kv heads, width, head size] a layer
        self.values: list[torch.Tensor] | None = None
        self.generated = 0  # the generated columns a step reads (at least those written)


def _float_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (batched, 3-d) in float32: half-precision inputs multiply at full speed and
    accumulate in float32 (as flash attention does), without a float32 copy of the cache."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


def _beam_decode_attention(shared: _SharedPrompt, module, query, key, value, attention_mask, scaling=None):
    """A one-token query of every beam [prompts x beams, heads, 1, dim] against its prompt (in
    `shared`, read once for all beams of the prompt, their query heads side by side) and its own
    generated keys (`key`, `value`: [rows, kv heads, new tokens, dim]); one softmax over both.
    `attention_mask` [rows, 1, 1, prompt width + new tokens]: the prompt's real tokens, then the
    generated ones written so far."""
    rows, heads, _, dim = query.shape
    new, beams, width = shared.generated, shared.beams, shared.width
    key, value, kv_heads = key[:, :, :new], value[:, :, :new], key.shape[1]
    prompts, per_kv = rows // beams, heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    prompt_keys, prompt_values = shared.keys[module.layer_idx], shared.values[module.layer_idx]
    # the prompt: [prompts x kv heads, beams x query heads a kv head, width]
    folded = (
        query.reshape(prompts, beams, kv_heads, per_kv, dim)
        .transpose(1, 2)
        .reshape(prompts * kv_heads, beams * per_kv, dim)
    )
    prompt_scores = _float_bmm(folded, prompt_keys.reshape(prompts * kv_heads, width, dim).transpose(1, 2)) * scale
    prompt_scores = prompt_scores.view(prompts, kv_heads, beams, per_kv, width)
    prompt_scores = prompt_scores.masked_fill(~attention_mask[::beams, :, None, :, :width], -float("inf"))
    # the generated tokens: [rows x kv heads, query heads a kv head, new]
    own = query.reshape(rows * kv_heads, per_kv, dim)
    generated_scores = _float_bmm(own, key.reshape(rows * kv_heads, new, dim).transpose(1, 2)) * scale
    generated_scores = generated_scores.view(rows, kv_heads, per_kv, new)
    generated_scores = generated_scores.masked_fill(~attention_mask[:, :, :, width : width + new], -float("inf"))
    generated_scores = generated_scores.view(prompts, beams, kv_heads, per_kv, new).transpose(1, 2)
    top = torch.maximum(prompt_scores.amax(-1), generated_scores.amax(-1))  # a prompt token is always there: finite
    prompt_weights = torch.exp(prompt_scores - top[..., None])
    generated_weights = torch.exp(generated_scores - top[..., None])
    total = prompt_weights.sum(-1) + generated_weights.sum(-1)  # [prompts, kv heads, beams, per kv]
    out = _float_bmm(
        prompt_weights.reshape(prompts * kv_heads, beams * per_kv, width).to(value.dtype),
        prompt_values.reshape(prompts * kv_heads, width, dim),
    ).view(prompts, kv_heads, beams, per_kv, dim)
    own_weights = generated_weights.transpose(1, 2).reshape(rows * kv_heads, per_kv, new).to(value.dtype)
    own_out = _float_bmm(own_weights, value.reshape(rows * kv_heads, new, dim)).view(
        prompts, beams, kv_heads, per_kv, dim
    )
    out = (out + own_out.transpose(1, 2)) / total[..., None]
    return out.transpose(1, 2).reshape(rows, 1, heads, dim).to(query.dtype), None


@contextmanager
def _decode_attention(model, shared: _SharedPrompt | None):
    """The model's attention while decoding: for beams (`shared`), each prompt read once by all
    its beams (_beam_decode_attention); for greedy decoding with sdpa, _grouped_decode_attention.
    Prompts themselves (more than one query token) run through sdpa as ever."""
    config = model.config
    if shared is None and config._attn_implementation != "sdpa":
        yield
        return
    from transformers import AttentionInterface

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if shared is not None and query.shape[2] == 1 and shared.keys is not None:
            return _beam_decode_attention(shared, module, query, key, value, attention_mask, scaling=scaling)
        return _grouped_decode_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )

    before = config._attn_implementation
    AttentionInterface.register(GROUPED_ATTENTION, attention)
    config._attn_implementation = GROUPED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


class _Batch:
    """The decoding state of the prompts still going (`beams` rows each, consecutive): fixed-address
    buffers that the graph reads and writes."""

    def __init__(
        self,
        model,
        prompts: list[list[int]],
        prefix_lengths: list[int],
        pad_id: int,
        stop_id: int,
        generation: GenerationConfig,
        max_new_tokens: int,
        device: torch.device,
    ) -> None:
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
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            real[i, width - len(prompt) :] = True
        self.ids, self.real = ids.to(device), real.to(device)
        self.prompts = torch.arange(n, device=device)  # which input prompt each group of rows answers
        # greedy: one cache, prompt then answer; beams: the prompts in a cache of their own (one
        # copy a prompt, `shared`), and each row's generated tokens in `cache`
        self.shared = _SharedPrompt(k, width) if k > 1 else None
        self.prompt_cache = StaticCache(config=model.config, max_cache_len=width) if self.shared else None
        self.cache = StaticCache(config=model.config, max_cache_len=max_new_tokens if self.shared else self.length)
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
                self.answer[i, self.prefix_width - m : self.prefix_width] = torch.tensor(prompt[-m:], dtype=torch.long)
            begin[i] = self.prefix_width - m
        self.answer = self.answer.to(device).repeat_interleave(k, 0)
        self.begin = begin.to(device).repeat_interleave(k, 0)
        self.written = torch.zeros(
            (), dtype=torch.long, device=device
        )  # new tokens chosen so far (read inside the graph)
        self.seen = None
        if self.penalty != 1.0:
            vocab = model.config.get_text_config().vocab_size
            inside = (torch.arange(self.prefix_width, device=device) >= self.begin).float()
            self.seen = (
                torch.zeros((n * k, vocab), device=device).scatter_add_(1, self.answer[:, : self.prefix_width], inside)
                > 0
            )
        self.search = (
            BeamState(n, k, max_new_tokens, stop_id, pad_id, g.length_penalty, g.early_stopping, device)
            if k > 1
            else None
        )
        # beams: the row (of its prompt's K) that holds each beam (generate()'s beam order is the search's)
        self.beam_rows = torch.arange(k, device=device).repeat(n, 1)
        self.finished = torch.zeros(n, dtype=torch.bool, device=device)  # greedy: the stop token written

    def prefill(self) -> None:
        """Run each prompt once, fill the cache (copied to the prompt's beams) and choose the first token."""
        width = self.prompt_width
        cache = self.prompt_cache if self.shared else self.cache
        causal = torch.ones((width, width), dtype=torch.bool, device=self.ids.device).tril()
        mask = torch.zeros(
            (len(self.ids), 1, width, width if self.shared else self.length), dtype=torch.bool, device=self.ids.device
        )
        mask[:, 0, :, :width] = causal & self.real[:, None, :]
        # a padding position attends to nothing and sdpa would fill it with NaN, which masked
        # keys still carry into sums (0 x NaN): let it see itself; no real token ever sees it
        mask[:, 0, :, :width] |= torch.eye(width, dtype=torch.bool, device=self.ids.device) & ~self.real[:, None, :]
        positions = (self.real.long().cumsum(1) - 1).masked_fill(~self.real, 1)
        logits = (
            self.model(
                input_ids=self.ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        if self.shared:
            self._share_prompts()
            logits = logits.repeat_interleave(self.beams, 0)
        self._choose(logits)

    def _share_prompts(self) -> None:
        self.shared.keys = [layer.keys for layer in self.prompt_cache.layers]
        self.shared.values = [layer.values for layer in self.prompt_cache.layers]

    def step(self) -> None:
        """One decode step on the buffers: feeds `token`, chooses the next."""
        logits = (
            self.model(
                input_ids=self.token,
                attention_mask=self.keys,
                position_ids=self.position,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        self.position.add_(1)
        self._choose(logits)

    def _rules(self, scores: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            scores = penalise(scores, self.seen, self.penalty)
        if self.ngram_size:
            bans = repeated_ngram_bans(
                self.answer, self.prefix_width + self.written, self.ngram_size, scores.shape[-1], self.begin
            )
            scores = scores.masked_fill(bans, -float("inf"))
        return scores

    def _choose(self, logits: torch.Tensor) -> None:
        """The next token of every row (greedy: the rules on the logits, as generate() applies
        them; beams: on the log-probabilities, then the selection), booked in the buffers."""
        if self.search is None:
            token = self._rules(logits).argmax(-1)
            self.finished |= token == self.stop_id
        else:
            scores = self._rules(torch.log_softmax(logits, -1))
            offsets = torch.arange(len(self.beam_rows), device=scores.device).unsqueeze(1) * self.beams
            in_beam_order = scores.index_select(0, (self.beam_rows + offsets).view(-1))
            parents, tokens = self.search.select(in_beam_order, self.written)
            rows, source = assign_rows(self.beam_rows, parents)
            self._copy_forks((source + offsets).view(-1))
            self.beam_rows.copy_(rows)
            token = torch.empty_like(tokens).scatter_(1, rows, tokens).view(-1)  # each beam's token in its row
        self.token.copy_(token.unsqueeze(1))
        self.answer.scatter_(1, (self.prefix_width + self.written).expand(len(token), 1), self.token)
        if self.seen is not None:
            self.seen.scatter_(1, self.token, True)
        # the new token goes into cache slot prompt_width + written at the next step: let it be seen
        self.keys.index_fill_(3, (self.prompt_width + self.written).view(1), True)
        self.written.add_(1)

    def _copy_forks(self, source: torch.Tensor) -> None:
        """A row whose new beam forked from another beam takes that beam's generated cache columns,
        answer and seen tokens (`source`: each row's, flat; most rows are their own)."""
        for layer in self.cache.layers:
            if layer.keys is None:  # the first choice (from the prompt): nothing generated, no cache yet
                continue
            for cache in (layer.keys, layer.values):
                copy_rows(cache, source, 0, self.written, self.max_new_tokens)
        self.answer.copy_(self.answer.index_select(0, source))
        if self.seen is not None:
            self.seen.copy_(self.seen.index_select(0, source))

    def done(self) -> torch.Tensor:
        """[prompts] bool: the prompts whose answers can no longer change."""
        return self.finished if self.search is None else self.search.done()

    def answers(self, count: int) -> torch.Tensor:
        """[prompts, count, max_new] each prompt's answers so far (greedy: one)."""
        if self.search is None:
            return self.answer[:, None, self.prefix_width :]
        return self.search.answers(count)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the prompts in `index` (new tensors: a graph must be captured again)."""
        rows = (index[:, None] * self.beams + torch.arange(self.beams, device=index.device)).view(-1)
        self.prompts, self.finished = self.prompts.index_select(0, index), self.finished.index_select(0, index)
        self.beam_rows = self.beam_rows.index_select(0, index)
        for name in ("keys", "position", "token", "answer", "begin", "seen"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, rows))
        if self.search is not None:
            self.search.keep(index)
        _keep_cache_rows(self.cache, rows)
        if self.shared:
            _keep_cache_rows(self.prompt_cache, index)
            self._share_prompts()


def _keep_cache_rows(cache, rows: torch.Tensor) -> None:
    """A StaticCache with only the batch rows in `rows` (new tensors)."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
        layer.batch_size = len(rows)


@torch.inference_mode()
def decode(
    model,
    prompts: list[list[int]],
    prefix_lengths: list[int],
    stop_id: int,
    pad_id: int,
    generation: GenerationConfig,
    max_new_tokens: int,
    graphs: bool | None = None,
) -> tuple[list[list[int]], int]:
    """Answers to `prompts` (token ids, unpadded; each ends with its answer's prefix,
    `prefix_lengths` tokens) in one batch, greedy or by beam search as `generation` says:
    num_return_sequences lists of new token ids a prompt, best first (each up to its stop token;
    after that, anything), and the number of steps run. `graphs`: capture the decode step as a
    CUDA graph (default: on a CUDA device)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers live in it
    device = next(inner.parameters()).device
    graphs = device.type == "cuda" if graphs is None else graphs
    batch = _Batch(inner, prompts, prefix_lengths, pad_id, stop_id, generation, max_new_tokens, device)
    with _decode_attention(inner, batch.shared):
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
                log.debug(
                    "step %d: %d of %d prompts still going; the batch shrinks to them",
                    t,
                    len(going),
                    len(batch.prompts),
                )
                ended = done.nonzero().view(-1)
                out[batch.prompts[ended]] = batch.answers(returned).index_select(0, ended)
                batch.keep(going)
                graph, eager_left = None, EAGER_STEPS if graphs else 0
        if batch.shared:  # the step writes column t-1 and reads columns 0 .. t-1
            generated = t if not graphs else min(max_new_tokens, -(-t // GENERATED_BUCKET) * GENERATED_BUCKET)
            if generated != batch.shared.generated:
                batch.shared.generated, graph = generated, None
        if not graphs:
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

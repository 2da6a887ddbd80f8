"""The state of a batch that the static-cache decoder (core/decode/static_cache.py) answers, and the
rules a step applies to it.

`DecodeBatch` holds fixed-address buffers (the KV caches, the next token, positions, the keys each row
may see, the answer so far, the tokens it holds) that a CUDA graph reads and writes, and runs the two
kinds of forward pass on them: the prefill (every prompt once; beams: into a cache of their own,
one copy a prompt) and a decode step (one token a row). After each it chooses the next tokens as
generate() would: the answer-only repetition rules (core/decode/repetition.py) on the logits, then
argmax (greedy) or core/decode/beam_search.py's selection (beams: on the log-probabilities), and for
a beam that forked from another, the copy of that beam's generated cache columns, answer and seen
tokens (core/decode/kernels.py). A beam stays in its row while it continues itself (rows are
assigned as beams go on, generate()'s beam order kept apart), so a step copies only the forked
beams'. `keep` drops finished prompts (new tensors: the runner captures its graph again).

The model is called as generate() calls it (left padding, positions counted from each row's first
real token, the attention mask as a tensor), so the answers are generate()'s tokens.
"""

from __future__ import annotations

import torch

from core.decode.attention import step_inputs
from core.decode.beam_search import BeamState, assign_rows
from core.decode.kernels import copy_rows
from core.decode.repetition import penalise, repeated_ngram_bans
from core.decode.request import DecodeRequest


class DecodeBatch:
    """The decoding state of the prompts still going (`beams` rows each, consecutive): fixed-address
    buffers that the graph reads and writes."""

    def __init__(self, model, request: DecodeRequest, device: torch.device) -> None:
        from transformers import StaticCache

        g, prompts, prefix_lengths = request.generation, request.prompts, request.prefix_lengths
        stop_id, pad_id, max_new_tokens = request.stop_id, request.pad_id, request.longest_answer
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
        # copy a prompt, read by all its beams: core/decode/attention.py), and each row's generated
        # tokens in `cache`
        self.prompt_cache = StaticCache(config=model.config, max_cache_len=width) if k > 1 else None
        self.cache = StaticCache(config=model.config, max_cache_len=max_new_tokens if k > 1 else self.length)
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
        self.search = BeamState(n, request, device) if k > 1 else None
        # beams: the row (of its prompt's K) that holds each beam (generate()'s beam order is the search's)
        self.beam_rows = torch.arange(k, device=device).repeat(n, 1)
        self.finished = torch.zeros(n, dtype=torch.bool, device=device)  # greedy: the stop token written

    def prefill(self) -> None:
        """Run each prompt once, fill the cache (copied to the prompt's beams) and choose the first token."""
        width = self.prompt_width
        cache = self.prompt_cache if self.beams > 1 else self.cache
        causal = torch.ones((width, width), dtype=torch.bool, device=self.ids.device).tril()
        mask = torch.zeros(
            (len(self.ids), 1, width, width if self.beams > 1 else self.length),
            dtype=torch.bool,
            device=self.ids.device,
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
        if self.beams > 1:
            logits = logits.repeat_interleave(self.beams, 0)
        self._choose(logits)

    def step(self, generated: int = 0) -> None:
        """One decode step on the buffers: feeds `token`, chooses the next. Beams: each reads its
        prompt in `prompt_cache` and the first `generated` columns of its own (at least those written)."""
        beam_inputs = {}
        if self.beams > 1:
            layers = self.prompt_cache.layers
            keys, values = [layer.keys for layer in layers], [layer.values for layer in layers]
            beam_inputs = step_inputs(keys, values, self.beams, generated)
        logits = (
            self.model(
                input_ids=self.token,
                attention_mask=self.keys,
                position_ids=self.position,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
                **beam_inputs,
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
        if self.prompt_cache is not None:
            _keep_cache_rows(self.prompt_cache, index)


def _keep_cache_rows(cache, rows: torch.Tensor) -> None:
    """A StaticCache with only the batch rows in `rows` (new tensors)."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
        layer.batch_size = len(rows)

"""The bookkeeping of beam search in fixed-shape tensors: which beams go on, which have finished.

transformers' generate() (5.x) keeps, for each prompt, its running beams and its best finished
answers, and after each step takes the 2K best (beam, token) continuations of all K beams; the
best K that did not just end go on, the ones that ended among the top K compete for the K
finished places (their score divided by length ** length_penalty), and a prompt is done once its
best running beam cannot beat its worst finished answer. `BeamState` does the same arithmetic in
the same order, on tensors whose shapes never change, so that core/decode/static_cache.py can capture a whole
decode step (forward, rules, this selection, the cache reorder) as one CUDA graph: the step
number is a tensor, and nothing here reads a value back to the host.

Only the tokens a beam generates are kept here (`running`, `finished`: [prompts, K, max_new]).
The caller keeps the key/value cache; `assign_rows` says which of its rows each new beam takes,
so that only a beam that forks from another copies that beam's cache.
"""

from __future__ import annotations

import torch

from core.decode.request import DecodeRequest

# transformers' stand-in for minus infinity in beam scores: sums of it stay finite and ordered
NEVER = -1.0e9


class BeamState:
    """Running and finished beams of `prompts` prompts, `beams` each."""

    def __init__(self, prompts: int, request: DecodeRequest, device: torch.device) -> None:
        """`prompts` of the request's still going (a batch shrinks), its decoding's beams each."""
        g, max_new_tokens, pad_id = request.generation, request.longest_answer, request.pad_id
        self.max_new_tokens, self.stop_id = max_new_tokens, request.stop_id
        self.length_penalty, self.early_stopping = g.length_penalty, g.early_stopping
        k = g.sequences_per_row
        self.running = torch.full((prompts, k, max_new_tokens), pad_id, dtype=torch.long, device=device)
        self.finished = self.running.clone()
        # only the first beam counts at the first step (the others are its copies)
        self.running_scores = torch.zeros((prompts, k), dtype=torch.float32, device=device)
        self.running_scores[:, 1:] = NEVER
        self.finished_scores = torch.full((prompts, k), NEVER, dtype=torch.float32, device=device)
        self.is_finished = torch.zeros((prompts, k), dtype=torch.bool, device=device)
        self.can_improve = torch.ones((prompts, 1), dtype=torch.bool, device=device)
        self.in_top_k = torch.arange(2 * k, device=device) < k  # of the 2K candidates, the first K

    def select(self, log_probs: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: `log_probs` [prompts x K, vocab] (after the logits processors; row j of a
        prompt's K is its beam j), `step` the number of tokens each beam holds (a 0-d tensor).
        Returns, for each new beam [prompts, K], the beam it continues and its new token."""
        prompts, k = self.running_scores.shape
        vocab = log_probs.shape[-1]
        scores = (log_probs.view(prompts, k, vocab) + self.running_scores[:, :, None]).view(prompts, k * vocab)
        top_scores, top_index = torch.topk(scores, 2 * k)
        parent, token = top_index // vocab, top_index % vocab
        candidates = torch.take_along_dim(self.running, parent[:, :, None], dim=1)
        candidates.scatter_(2, step.expand(prompts, 2 * k, 1), token[:, :, None])
        ends = (token == self.stop_id) | (step >= self.max_new_tokens - 1)

        # the beams that go on: the best K that did not end
        going_scores = top_scores + ends.float() * NEVER
        going = torch.topk(going_scores, k)[1]
        new_parent = torch.gather(parent, 1, going)
        new_token = torch.gather(token, 1, going)
        new_running = torch.take_along_dim(candidates, going[:, :, None], dim=1)
        new_running_scores = torch.gather(going_scores, 1, going)

        # the finished answers: the K best of those kept so far and those that ended among the top K
        just_ended = ends & self.in_top_k[None, :]
        generated = step.to(torch.float64) + 1
        ended_scores = top_scores / (generated**self.length_penalty).to(torch.float32)
        full = self.is_finished.all(-1, keepdim=True) & self.early_stopping
        ended_scores = ended_scores + full.float() * NEVER
        ended_scores = ended_scores + (~self.can_improve).float() * NEVER
        ended_scores = ended_scores + (~just_ended).float() * NEVER
        merged_scores = torch.cat((self.finished_scores, ended_scores), dim=1)
        best = torch.topk(merged_scores, k)[1]
        self.finished.copy_(
            torch.take_along_dim(torch.cat((self.finished, candidates), dim=1), best[:, :, None], dim=1)
        )
        self.finished_scores.copy_(torch.gather(merged_scores, 1, best))
        self.is_finished.copy_(torch.gather(torch.cat((self.is_finished, just_ended), dim=1), 1, best))
        self.running.copy_(new_running)
        self.running_scores.copy_(new_running_scores)

        # can the best running beam still beat the worst finished answer? (as generate() estimates it)
        best_running = self.running_scores[:, :1] / (generated**self.length_penalty).to(torch.float32)
        worst_finished = torch.where(self.is_finished, self.finished_scores.min(1, keepdim=True)[0], NEVER)
        self.can_improve &= (best_running > worst_finished).any(-1, keepdim=True)
        return new_parent, new_token

    def done(self) -> torch.Tensor:
        """[prompts] bool: the prompts whose finished answers can no longer change."""
        full = self.is_finished.all(-1) & self.early_stopping
        return ~self.can_improve.view(-1) | full

    def answers(self, count: int) -> torch.Tensor:
        """[prompts, count, max_new] the best `count` finished answers of each prompt, best first."""
        return self.finished[:, :count]

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the prompts in `index` (new tensors: a graph must be captured again)."""
        for name in ("running", "finished", "running_scores", "finished_scores", "is_finished", "can_improve"):
            setattr(self, name, getattr(self, name).index_select(0, index))


def assign_rows(rows: torch.Tensor, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each new beam lives, so that few cache rows are copied: `rows` [prompts, K] is the
    row (of its prompt's K) holding each beam, `parents` [prompts, K] the beam each new beam
    continues. A new beam takes its parent's row if it is the parent's first child (in beam
    order); its other children take the rows that no new beam continues. Returns the new beams'
    rows and, for each row, the row it must copy (itself, unless a second child moved in).

    A copy never reads a row that another copy writes: the rows written are those no beam
    continues, the rows read are those of continued beams."""
    k = rows.shape[1]
    parent_rows = torch.gather(rows, 1, parents)
    same = parent_rows[:, :, None] == parent_rows[:, None, :]
    earlier = torch.ones((k, k), dtype=torch.bool, device=rows.device).tril(-1)
    first = ~(same & earlier).any(-1)  # no earlier new beam continues the same row
    kept = torch.zeros_like(rows).scatter_add_(1, parent_rows, first.long()) > 0
    columns = torch.arange(k, device=rows.device)
    free = torch.argsort(kept.long() * k + columns, dim=1)  # the rows nobody continues first, in order
    later = (~first).long().cumsum(1) - 1  # a later child's rank among the later children
    new_rows = torch.where(first, parent_rows, torch.gather(free, 1, later.clamp(min=0)))
    source = columns.expand_as(rows).clone().scatter_(1, new_rows, parent_rows)
    return new_rows, source

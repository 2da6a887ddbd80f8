"""Repetition rules that look at the answer's tokens only, never at the prompt's.

Clinicians restate the case before they answer it, so an answer that repeats the prompt's words
is what we want. transformers' `repetition_penalty` and `no_repeat_ngram_size` count the
prompt's tokens as well: they punish that restating and still let an answer loop on its own
sentence (docs/quality.md). Here both rules see only the tokens generated so far:

- the penalty divides a positive logit (multiplies a negative one) of every token the answer
  already holds, as transformers' penalty does;
- the n-gram rule forbids the token that would complete an n-gram the answer already holds.

The same two tensor functions serve transformers' generate() (greedy and beam search, through
`AnswerOnlyRepetition` as a logits processor) and the CUDA-graph greedy path (core/decode/static_cache.py),
whose shapes must stay fixed: so the n-gram rule takes a history buffer and a length that may be
a tensor. The export's engine (core/export/runtime.py) runs the same rules in NumPy for greedy decoding.
"""

from __future__ import annotations

import torch


def penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """`logits` [rows, vocab] with each token marked in `seen` [rows, vocab] (bool) penalised:
    a positive logit divided by `penalty`, a negative one multiplied by it."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def repeated_ngram_bans(
    tokens: torch.Tensor, end: torch.Tensor | int, n: int, vocab: int, begin: torch.Tensor | int = 0
) -> torch.Tensor:
    """[rows, vocab] bool: the tokens that would complete an n-gram already in the answer.

    A row's answer is its columns `begin` (a number, or one per row) up to but not including
    `end`; what lies outside is ignored, whatever it holds. The answer's last n-1 tokens are
    compared with every earlier window of n-1 answer tokens; where one matches, the token after
    that window is banned. (`end` may be a tensor: the CUDA-graph path's length lives on the GPU.)"""
    rows, width = tokens.shape
    bans = torch.zeros((rows, vocab), dtype=torch.float32, device=tokens.device)
    if n < 1 or width < n:
        return bans.bool()
    end = torch.as_tensor(end, device=tokens.device)
    begin = torch.as_tensor(begin, device=tokens.device).reshape(-1, 1)  # [rows or 1, 1]
    if n == 1:  # every answer token already written
        columns = torch.arange(width, device=tokens.device)
        written = (columns >= begin) & (columns < end)
        return bans.scatter_add_(1, tokens, written.float().expand(rows, -1)) > 0
    # the answer's last n-1 tokens: columns end-n+1 .. end-1 (clamped while too short: no window is then valid)
    tail = (end - (n - 1) + torch.arange(n - 1, device=tokens.device)).clamp(0, width - 1)
    suffix = tokens.index_select(1, tail)  # [rows, n-1]
    windows = tokens.unfold(1, n - 1, 1)[:, : width - n + 1]  # window j: columns j .. j+n-2, then token j+n-1
    start = torch.arange(width - n + 1, device=tokens.device)
    # the window and the token after it lie inside the answer (none does while it holds fewer than n tokens)
    inside = (start >= begin) & (start + n - 1 < end)  # [rows or 1, width-n+1]
    match = (windows == suffix[:, None, :]).all(-1) & inside
    # scatter_add, not scatter: a token banned by one window must stay banned when another
    # window that does not match names the same token
    bans.scatter_add_(1, tokens[:, n - 1 :], match.float())
    return bans > 0


class AnswerOnlyRepetition:
    """A logits processor for transformers' generate(): the penalty and the n-gram rule over each
    row's answer. Batches are left-padded, so every row's generated tokens start at the same
    column; `answer_begins` (one a prompt row) is where each answer starts, earlier where an
    answer prefix was written for the model (generation.answer_prefix)."""

    def __init__(self, answer_begins: list[int], penalty: float, ngram_size: int) -> None:
        self.answer_begins, self.penalty, self.ngram_size = answer_begins, penalty, ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        begins = torch.tensor(self.answer_begins, device=input_ids.device)
        # beams and returned sequences follow their prompt row: each row's copies are consecutive
        begins = begins.repeat_interleave(input_ids.shape[0] // len(begins)).reshape(-1, 1)
        end = input_ids.shape[1]
        if self.penalty != 1.0:
            inside = (torch.arange(end, device=input_ids.device) >= begins).float()
            seen = torch.zeros_like(scores, dtype=torch.float32).scatter_add_(1, input_ids, inside) > 0
            scores = penalise(scores, seen, self.penalty)
        if self.ngram_size:
            bans = repeated_ngram_bans(input_ids, end, self.ngram_size, scores.shape[-1], begins)
            scores = scores.masked_fill(bans, -float("inf"))
        return scores

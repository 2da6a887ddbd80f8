"""Beam search for the exported model, in NumPy over an ONNX Runtime session: the answers PyTorch gives.

ONNX Runtime GenAI (0.18) has a beam search of its own, but it ranks a finished answer by its
summed log-probability divided by the length of the *whole sequence*, prompt included (the rule
transformers used before 4.40), where transformers 5.x and our PyTorch decoder divide by the
answer's own length. With a vignette and its echo (several hundred prompt tokens) in front, the
divisor hardly changes with the answer's length, so the shortest answer wins: its beams ended
after about one token where PyTorch's wrote twenty (issue 32, docs/deploy.md). It also cannot
apply repetition rules to its beams. So the export runs its beams here, on the model file that
ONNX Runtime GenAI loads (`model.onnx`, its key/value cache as explicit inputs and outputs):

- `BeamChoice` is the arithmetic of one prompt's beam search as transformers 5.x and
  core/decode/beam_search.py do it (the 2K best continuations, the best K that did not end go
  on, the ended ones compete for K finished places by score / length ** length_penalty, done when
  the best running beam cannot beat the worst finished answer);
- `beam_search` runs the model on the prompt once, then one step a token for the K beams, the
  answer-only repetition rules on the log-probabilities, the cache rows reordered to follow
  their beams.

Nothing here imports torch: a device needs onnxruntime (which onnxruntime-genai depends on).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NEVER = -1.0e9  # transformers' minus infinity for beam scores: sums of it stay finite and ordered


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the `k` largest `scores` (1-d), largest first; ties keep the lower index first."""
    index = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return index[np.lexsort((index, -scores[index]))]


class BeamChoice:
    """The running and finished beams of one prompt: `beams` of them, at most `max_new_tokens` each."""

    def __init__(self, beams: int, max_new_tokens: int, stop_id: int, length_penalty: float, early_stopping: bool):
        self.k, self.max_new_tokens, self.stop_id = beams, max_new_tokens, stop_id
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.running: list[list[int]] = [[] for _ in range(beams)]
        # only the first beam counts at the first step (the others are its copies)
        self.running_scores = np.full(beams, NEVER, dtype=np.float32)
        self.running_scores[0] = 0.0
        self.finished: list[tuple[float, list[int]]] = []  # (score, tokens), best first, at most K
        self.can_improve = True

    def select(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step: `log_probs` [K, vocab] of each running beam (rules applied). Returns the
        parent beam and the new token of each of the K beams that go on."""
        k, vocab = log_probs.shape
        step = len(self.running[0])
        scores = (log_probs + self.running_scores[:, None]).reshape(-1)
        best = top(scores, 2 * k)
        top_scores, parent, token = scores[best], best // vocab, best % vocab
        ends = (token == self.stop_id) | (step >= self.max_new_tokens - 1)
        going = top(top_scores + ends.astype(np.float32) * np.float32(NEVER), k)
        self._book_finished(top_scores[:k], parent[:k], token[:k], ends[:k], step + 1)
        self.running = [self.running[parent[j]] + [int(token[j])] for j in going]
        self.running_scores = (top_scores + ends.astype(np.float32) * np.float32(NEVER))[going]
        # can the best running beam still beat the worst finished answer? (as generate() estimates it)
        if len(self.finished) == k:
            best_running = self.running_scores[0] / np.float32((step + 1) ** self.length_penalty)
            self.can_improve &= bool(best_running > self.finished[-1][0])
        return parent[going], token[going]

    def _book_finished(self, scores, parents, tokens, ends, generated: int) -> None:
        """The candidates among the top K that ended compete for the K finished places."""
        if (len(self.finished) == self.k and self.early_stopping) or not self.can_improve:
            return
        norm = np.float32(generated**self.length_penalty)
        for score, parent, token, ended in zip(scores, parents, tokens, ends, strict=True):
            if ended:
                self.finished.append((float(np.float32(score) / norm), self.running[parent] + [int(token)]))
        self.finished.sort(key=lambda item: -item[0])  # stable: earlier candidates first on ties
        del self.finished[self.k :]

    def done(self) -> bool:
        return not self.can_improve or (self.early_stopping and len(self.finished) == self.k)

    def answer(self) -> list[int]:
        return self.finished[0][1] if self.finished else self.running[0]


def beam_search(
    session,
    prompt: list[int],
    choice: BeamChoice,
    rules: Callable[[np.ndarray, list[list[int]]], np.ndarray],
    head_size: int,
    min_new_tokens: int = 0,
) -> list[int]:
    """The best answer's new tokens (end-of-turn token included where it ended). `session` is an
    onnxruntime.InferenceSession of the export's model.onnx; `prompt` its tokens (the answer's
    prefix included); `rules(log_probs, answers)` the answer-only repetition rules (answers: each
    beam's new tokens); `head_size` the cache's last dimension (genai_config.json's, symbolic in the file)."""
    inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    cache = {i.name: np.zeros((1, i.shape[1], 0, head_size), dtype=np.float32) for i in inputs}
    outputs = ["logits"] + [i.name.replace("past_key_values", "present") for i in inputs]
    ids = np.asarray([prompt], dtype=np.int64)
    width = len(prompt)
    while True:
        feeds = {"input_ids": ids, "attention_mask": np.ones((len(ids), width), dtype=np.int64), **cache}
        logits, *present = session.run(outputs, feeds)
        log_probs = rules(log_softmax(logits[:, -1].astype(np.float32)), choice.running[: len(ids)])
        if len(choice.running[0]) < min_new_tokens:
            log_probs[:, choice.stop_id] = -np.inf
        if len(ids) < choice.k:  # the prompt's step: every beam continues beam 0
            log_probs = np.concatenate(
                [log_probs, np.full((choice.k - 1, log_probs.shape[1]), -np.inf, dtype=np.float32)]
            )
        parents, tokens = choice.select(log_probs)
        if choice.done() or len(choice.running[0]) >= choice.max_new_tokens:
            return choice.answer()
        rows = np.minimum(parents, len(ids) - 1)
        cache = {i.name: value[rows] for i, value in zip(inputs, present, strict=True)}
        ids, width = tokens.reshape(-1, 1).astype(np.int64), width + 1

"""Beam search's row bookkeeping (core/decode/beam_search.py) and the cache copy it drives
(core/decode/kernels.py), on hand-made cases; the whole search against generate() is in test_model.py."""

import dataclasses

import numpy as np
import pytest
import torch

from core.config import parse_params
from core.decode.beam_search import BeamState, assign_rows
from core.decode.kernels import copy_rows
from core.decode.request import plain_request
from core.export.beams import BeamChoice, log_softmax


def test_a_first_child_keeps_its_parents_row_and_a_second_child_takes_a_free_one():
    # beams 0 and 1 both continue beam 2 (in row 2); beam 2 continues beam 0, beam 3 beam 1; nobody continues beam 3
    rows, source = assign_rows(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[2, 2, 0, 1]]))
    assert rows.tolist() == [[2, 3, 0, 1]]  # the second child of row 2 moves into row 3, the free one
    assert source.tolist() == [[0, 1, 2, 2]]  # only row 3 copies (row 2's history); the others keep theirs


def test_rows_already_permuted_and_several_prompts():
    rows = torch.tensor([[3, 0, 1, 2], [0, 1, 2, 3]])
    parents = torch.tensor([[0, 0, 0, 3], [0, 1, 2, 3]])  # prompt 1: every beam continues itself
    new_rows, source = assign_rows(rows, parents)
    # prompt 0: beam 0 (row 3) has three children: the first stays in row 3, the others take the free rows 0 and 1
    assert new_rows.tolist() == [[3, 0, 1, 2], [0, 1, 2, 3]]
    assert source.tolist() == [[3, 3, 2, 3], [0, 1, 2, 3]]  # rows 0 and 1 copy row 3; prompt 1 copies nothing
    # a copy's source is always a row that keeps its own history: no row is both written and read
    assert all(row_sources[s] == s for row_sources in source.tolist() for s in row_sources)


def test_copy_rows_copies_only_the_written_columns_of_rows_that_move():
    cache = torch.arange(4 * 2 * 5 * 3, dtype=torch.float32).view(4, 2, 5, 3)  # rows, heads, columns, head size
    before = cache.clone()
    copy_rows(cache, torch.tensor([0, 1, 2, 2]), 1, torch.tensor(2), 4)  # columns 1 and 2 of row 3 from row 2
    assert torch.equal(cache[3, :, 1:3], before[2, :, 1:3])
    assert torch.equal(cache[3, :, :1], before[3, :, :1]) and torch.equal(cache[3, :, 3:], before[3, :, 3:])
    assert torch.equal(cache[:3], before[:3])


def toy_log_probs(history: list[int], vocab: int = 12, stop_id: int = 0) -> np.ndarray:
    """A deterministic toy model: log-probabilities from the tokens so far, the end more likely as the answer grows."""
    logits = np.random.default_rng(abs(hash(tuple(history))) % 2**32).normal(size=vocab) * 2
    logits[stop_id] += 0.4 * len(history) - 2
    return log_softmax(logits.astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (1.0, True), (0.5, False), (2.0, False)])
def test_the_exports_beam_choice_picks_the_answers_of_the_pytorch_beam_state(
    length_penalty, early_stopping, repo_params
):
    """core/export/beams.py (NumPy, one prompt) against core/decode/beam_search.py (torch, tested
    against generate()): the same toy model, the same best answer, on 40 searches each."""
    beams, max_new, stop = 4, 10, 0
    decoding = dict(num_beams=beams, max_new_tokens=max_new, length_grid=[], mbr_candidates=0, min_new_tokens=0)
    generation = dataclasses.replace(
        parse_params(repo_params).profile.generation,
        **decoding,
        do_sample=False,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    request = plain_request([[0]], generation, stop_id=stop, pad_id=-1)
    lengths = set()
    for seed in range(40):
        prefix = [seed]
        choice = BeamChoice(beams, max_new, stop, length_penalty, early_stopping)
        state = BeamState(1, request, torch.device("cpu"))
        for step in range(max_new):
            ours = np.stack([toy_log_probs(prefix + beam) for beam in choice.running])
            theirs = np.stack([toy_log_probs(prefix + state.running[0, j, :step].tolist()) for j in range(beams)])
            choice.select(ours)
            state.select(torch.from_numpy(theirs), torch.tensor(step))
            if choice.done() or bool(state.done()[0]):
                assert choice.done() and bool(state.done()[0]), (seed, step)
                break
        answer = [t for t in state.answers(1)[0, 0].tolist() if t != -1]
        assert choice.answer() == answer[: answer.index(stop) + 1 if stop in answer else None], seed
        lengths.add(len(choice.answer()))
    assert len(lengths) >= 2, lengths  # answers of several lengths: the ranking by length was exercised

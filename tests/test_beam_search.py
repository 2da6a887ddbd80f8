"""Beam search's row bookkeeping (core/decode/beam_search.py) and the cache copy it drives
(core/decode/kernels.py), on hand-made cases; the whole search against generate() is in test_model.py."""

import torch

from core.decode.beam_search import assign_rows
from core.decode.kernels import copy_rows


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

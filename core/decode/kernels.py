"""A GPU kernel of the decoder (Triton): copy a few rows' generated cache columns in place.

Beam search moves a beam's history only when it forks: core/decode/beam_search.py's `assign_rows` keeps
every other beam in its row, so a step copies a handful of rows, and only the columns generated
so far. Indexing that in PyTorch inside a CUDA graph would read and write every row and every
column of every layer each step (an index_select and a copy back: two thirds of a 4-beam step
on the Qwen3 shape, docs/benchmarks.md section 5); this kernel reads the number of written
columns and each row's source from the GPU, and a row that keeps its own history costs nothing.
Without Triton (a CPU), `copy_rows` does the same with PyTorch indexing, eagerly.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: the PyTorch path below
    triton = None

BLOCK = 2048  # elements a program copies: a row's head holds columns x head size contiguous ones

if triton is not None:

    @triton.jit
    def _copy_rows(base, source, count, row_stride, head_stride, begin, head_size: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1).to(tl.int64)
        src = tl.load(source + row)
        # a row that keeps its own history copies nothing: the loop below does not run
        n = tl.where(src != row, tl.load(count) * head_size, 0)
        start = begin * head_size
        for offset in range(0, n, BLOCK):
            offsets = offset + tl.arange(0, BLOCK)
            inside = offsets < n
            values = tl.load(base + src * row_stride + head * head_stride + start + offsets, mask=inside)
            tl.store(base + row * row_stride + head * head_stride + start + offsets, values, mask=inside)


def copy_rows(cache: torch.Tensor, source: torch.Tensor, begin: int, count: torch.Tensor, most: int) -> None:
    """`cache` [rows, heads, columns, head size]: in each row r whose `source[r]` is another row,
    columns begin .. begin+count-1 become that row's. `count` is a 0-d tensor (read on the
    device); `most` bounds it. Sources are never themselves written (assign_rows sees to it)."""
    rows, heads, _, head_size = cache.shape
    if cache.is_cuda and triton is not None:
        assert cache.stride(3) == 1 and cache.stride(2) == head_size
        grid = (rows, heads)
        _copy_rows[grid](
            cache, source, count, cache.stride(0), cache.stride(1), begin, head_size=head_size, BLOCK=BLOCK
        )
        return
    if cache.is_cuda:  # no Triton: every row, every column (slower, and still graph-safe)
        region = cache[:, :, begin : begin + most]
        region.copy_(region.index_select(0, source))
        return
    moved = (source != torch.arange(rows, device=source.device)).nonzero().view(-1)
    if len(moved):
        region = cache[:, :, begin : begin + int(count)]
        region[moved] = region[source[moved]]

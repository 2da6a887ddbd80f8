"""Data-parallel runs under `torchrun` or `accelerate launch`.

The launcher starts one process per GPU (or per CPU worker, with gloo) and sets RANK, WORLD_SIZE
and LOCAL_RANK; transformers' Trainer reads them and wraps the model in DDP. What is left to us:
put each process's model on its own device, keep the effective batch size independent of the
number of processes, and let only rank 0 write outputs.
"""

from __future__ import annotations

import os
import sys

from core.config import ConfigError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def per_process_grad_accum(batch_size: int, grad_accum: int) -> int:
    """`batch_size` x `grad_accum` is the effective batch of a one-process run; with N processes
    each accumulates grad_accum / N steps, so the optimiser sees the same batch and the run
    follows the same schedule (same number of steps) on any number of GPUs."""
    n = world_size()
    if grad_accum % n:
        raise ConfigError(
            f"training.grad_accum={grad_accum} cannot be split over {n} processes: set it to a multiple of {n} "
            f"(the effective batch is batch_size x grad_accum = {batch_size * grad_accum} on any number of processes)"
        )
    return grad_accum // n


def passes(batch_size: int, grad_accum: int, rows_per_pass: int | str, on_gpu: bool) -> tuple[int, int]:
    """(rows a forward/backward pass carries in each process, passes accumulated per optimiser
    step) for the effective batch `batch_size` x `grad_accum`, which stays the same on any number
    of processes and with any pass size. `rows_per_pass` auto: on a GPU the whole update in one
    pass (a small model's pass of a few rows leaves the GPU waiting on launches), else batch_size."""
    n, effective = world_size(), batch_size * grad_accum
    if rows_per_pass == "auto":
        if on_gpu and effective % n == 0:
            return effective // n, 1
        return batch_size, per_process_grad_accum(batch_size, grad_accum)
    if effective % (rows_per_pass * n):
        raise ConfigError(
            f"training.rows_per_pass={rows_per_pass} does not divide the effective batch of {effective} rows "
            f"(batch_size x grad_accum){f' over {n} processes' if n > 1 else ''}: set it to a divisor of "
            f"{effective // n if effective % n == 0 else effective}, or auto"
        )
    return rows_per_pass, effective // (rows_per_pass * n)


def _process_group():
    """torch.distributed where a process group is running, else None. A process that never
    imported torch has none, and importing torch only to find that out costs seconds."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    if dist := _process_group():
        dist.barrier()


def shut_down() -> None:
    """Leave the process group cleanly (torch warns at exit otherwise)."""
    if dist := _process_group():
        dist.destroy_process_group()

"""One stage script run in this process and measured: wall time, peak GPU memory, peak resident
memory; optionally as on an NVIDIA T4 (16 GB, no bfloat16) on a larger GPU.

    python -m benchmarks.gpu_stage stages.finetune --out stage.json
    python -m benchmarks.gpu_stage stages.finetune --out stage.json --t4-like

--t4-like: compute capability 7.5 and no bfloat16 reported (so `dtype: auto` resolves to float16,
in Unsloth's training and in answering alike, as on a T4) and this process's GPU memory capped at 15 GiB
(torch.cuda.set_per_process_memory_fraction: an allocation past it fails as it would on the card;
torch.cuda.mem_get_info reports the card's 15 GiB, so that `batch_size: auto` sizes to it).
The kernels stay the larger GPU's own: speed is not a T4's, memory and precision are.
Used by benchmarks/gpu_standins.sh; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path

T4_MEMORY_GIB = 15.0


# Kernel compilers read the capability to choose the binary they build: told 7.5 on an H200, Triton
# builds sm_75 code that the card cannot load ("no kernel image is available for execution on the
# device", the finetune stage's first kernel launch). Asked from within them, the card's own.
KERNEL_COMPILERS = ("triton", "torch._inductor", "torch.utils._triton", "torch._dynamo.device_interface")
# the modules that were told 7.5, for the stage's record
TOLD_T4 = set()


def capability_as_t4(card_capability):
    """get_device_capability that answers 7.5 (a T4), except to a kernel compiler somewhere up the stack."""

    def capability(device=None):
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith(KERNEL_COMPILERS):
                return card_capability(device)
            frame = frame.f_back
        TOLD_T4.add(sys._getframe(1).f_globals.get("__name__", ""))
        return (7, 5)

    return capability


def act_as_t4() -> None:
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    cap = int(T4_MEMORY_GIB * 2**30)
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
    # a T4 is compute capability 7.5: torch's native-bfloat16 check and Unsloth's (which reads the
    # capability when it is imported, after this) both say no
    torch.cuda.is_bf16_supported = lambda *args, **kwargs: False  # noqa: ARG005 (the signature varies by torch version)
    torch.cuda.get_device_capability = capability_as_t4(torch.cuda.get_device_capability)
    device_memory = torch.cuda.mem_get_info

    def t4_memory(device=None):
        free, _ = device_memory(device)
        return min(free, cap - torch.cuda.memory_reserved(device)), cap

    torch.cuda.mem_get_info = t4_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", help="a module to run as __main__, e.g. stages.finetune")
    parser.add_argument("--out", required=True, help="a JSON file for the measurements")
    parser.add_argument("--t4-like", action="store_true")
    args = parser.parse_args()
    import torch

    from core.resources import peak_rss_mb

    if args.t4_like:
        act_as_t4()
    start = time.perf_counter()
    status = 0
    sys.argv = [args.stage]
    try:
        runpy.run_module(args.stage, run_name="__main__", alter_sys=True)
    except SystemExit as stop:  # the stages end with sys.exit on a user error
        status = stop.code if isinstance(stop.code, int) else 1
    record = {
        "stage": args.stage,
        "t4_like": args.t4_like,
        "exit": status,
        "seconds": time.perf_counter() - start,
        "peak_gpu_allocated_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "told_capability_7_5": sorted(TOLD_T4),
    }
    Path(args.out).write_text(json.dumps(record, indent=1))
    sys.exit(status)


if __name__ == "__main__":
    main()

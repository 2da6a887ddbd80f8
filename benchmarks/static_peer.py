"""Our static-cache decoder (core/decode/static_cache.py) against transformers' own static cache,
timed as a stage pays for each: a fresh process's first call, then the same call again, warm.

    python -m benchmarks.static_peer --family qwen3 --size full --beams 1 --out peer.json   # on a GPU
    python -m benchmarks.static_peer --family qwen3 --beams 4 --decoders ours,library,library-eager

Each decoder runs in a process of its own (a stage is one process: what it compiles, it compiles
once): `ours` is predict's path (`generation.static_cache: true`); `library` is transformers'
`generate(cache_implementation="static")`, which compiles the forward with torch.compile on a GPU;
`library-eager` the same cache without compiling. Both answer the same prompts of a stand-in
checkpoint (benchmarks/standins.py: the real tokenizer and config, random weights, so every answer
runs to max_new_tokens) in batches of the same size, greedy or with `--beams`, and the peak GPU
memory of each call is recorded. The params come through the stages' loader (benchmarks/settings.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.backends import scaled_rows
from benchmarks.settings import change_profile, checked, read_params
from core.decode.answer import generate_responses

log = logging.getLogger("benchmarks.static_peer")
DECODERS = ("ours", "library", "library-eager")


def library_generate(model, rows: list[dict], generation, batch_size: int, compile_: bool) -> list[int]:
    """transformers' generate() with its static cache on the prompts our path feeds (left-padded: the
    tokenizer as BaseUnslothModel loads it): the new tokens of each row."""
    import torch

    model.load()
    model.backend.for_inference(model.model)
    tokenizer, counts = model.tokenizer, []
    for start in range(0, len(rows), batch_size):
        prompts = [model.prompt_for(row) for row in rows[start : start + batch_size]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.model.device)
        with torch.no_grad():
            out = model.model.generate(
                **batch,
                max_new_tokens=generation.max_new_tokens,
                do_sample=False,
                num_beams=generation.num_beams,
                length_penalty=generation.length_penalty,
                cache_implementation="static",
                disable_compile=not compile_,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        counts += (new != tokenizer.pad_token_id).sum(1).tolist()
    return counts


def worker(args) -> None:
    """One decoder in this process: `--calls` calls on the same prompts, each timed."""
    import torch

    from core.models.families import model_for

    raw = change_profile(
        read_params(),
        args.family,
        name=args.checkpoint,
        backend="hf",
        dtype=args.dtype,
        load_in_4bit=False,
        max_seq_length=1024,
        gguf_package=None,
        gguf_file=None,
        generation={
            "max_new_tokens": args.max_new_tokens,
            "length_grid": [],
            "num_beams": args.beams,
            "answer_prefix": "none",
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "batch_size": args.batch_size,
            "static_cache": True,
        },
    )
    params = checked(raw)
    model = model_for(params.profile, params.prompt.system)
    rows = scaled_rows(args.rows, labelled=False)
    calls = []
    for _ in range(args.calls):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        began = time.perf_counter()
        if args.decoder == "ours":
            counts = generate_responses(model, rows, params.profile.generation).new_tokens
        else:
            counts = library_generate(
                model, rows, params.profile.generation, args.batch_size, compile_=args.decoder == "library"
            )
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        calls.append(
            {
                "seconds": time.perf_counter() - began,
                "mean_new_tokens": sum(counts) / len(counts),
                "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
            }
        )
        log.info("%s: %s", args.decoder, calls[-1])
    Path(args.worker_out).write_text(json.dumps({"decoder": args.decoder, "calls": calls}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="qwen3", choices=["qwen3", "llama32"])
    parser.add_argument("--size", default="full", choices=["tiny", "full"])
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=200, help="rows a batch, the same for every decoder")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--calls", type=int, default=2, help="the first is what a stage pays; the rest warm")
    parser.add_argument("--out", default="static_peer.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--decoder", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.worker:
        worker(args)
        return
    from tests.checkpoints import build_checkpoint

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = build_checkpoint(args.family, Path(scratch) / "checkpoint", size=args.size)
        for decoder in args.decoders.split(","):
            out = Path(scratch) / f"{decoder}.json"
            command = [sys.executable, "-m", "benchmarks.static_peer", "--worker", "--decoder", decoder]
            command += ["--checkpoint", str(checkpoint), "--worker-out", str(out)]
            for key in ("family", "dtype", "beams", "rows", "batch_size", "max_new_tokens", "calls"):
                command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            done = subprocess.run(command)
            results[decoder] = json.loads(out.read_text()) if done.returncode == 0 else {"failed": done.returncode}
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print("| decoder | " + " | ".join(f"call {i + 1}: s, GiB" for i in range(args.calls)) + " | new tokens |")
    print("|---|" + "---|" * (args.calls + 1))
    for decoder, result in results.items():
        calls = result.get("calls", [])
        cells = [f"{c['seconds']:.1f}, {c['peak_gpu_memory_gb']:.1f}" for c in calls] or ["failed"] * args.calls
        print(f"| {decoder} | " + " | ".join(cells) + f" | {calls[0]['mean_new_tokens'] if calls else '-'} |")


if __name__ == "__main__":
    main()

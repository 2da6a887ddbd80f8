"""Benchmark the two backends on one GPU: the same LoRA fine-tuning and generation workload,
each backend in its own process, then one table.

    python -m benchmarks.backends --shape qwen3            # both backends, prints the table
    python -m benchmarks.backends --write-csv DIR --rows 400  # the scaled data set, as CSVs

The model is a random-init checkpoint with the real shape of Qwen3-0.6B or Llama-3.2-1B
(tests/checkpoints.py), so no weights are needed: speed and memory do not depend on them.
Random weights rarely emit the end-of-turn token, so every response runs to max_new_tokens:
the generation figures are worst cases.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNTIES = ["Kiambu", "Kakamega", "Uasin Gishu", "Nairobi", "Kisumu", "Nakuru", "Machakos", "Kilifi"]
LEVELS = ["Health Centres", "Dispensaries and Private Clinics", "Sub-county Hospitals and Nursing Homes", "County Hospitals"]


def scaled_rows(n: int, labelled: bool, seed: int = 0) -> list[dict]:
    """`n` rows of realistic length: the sample rows replicated, each copy with another nurse."""
    from core.data import read_vignettes, strip_nurse_intro

    source = read_vignettes(REPO / "data/sample" / ("train.csv" if labelled else "test.csv"), labelled=labelled)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = dict(source[i % len(source)])
        county, level, years = rng.choice(COUNTIES), rng.choice(LEVELS), rng.randint(1, 30)
        row.update({"Master_Index": f"ID_{'T' if labelled else 'S'}{i:05d}", "County": county, "Health level": level,
                    "Years of Experience": str(years)})
        row["Prompt"] = (f"I am a nurse with {years} years of experience in General nursing working in a {level} "
                         f"in {county} county in Kenya. {strip_nurse_intro(row['Prompt'])}")
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def params_for(backend: str, checkpoint: str, family: str, args) -> "object":
    import yaml

    from core.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"] = family
    profile = raw["models"][family]
    profile.update(name=checkpoint, backend=backend, load_in_4bit=args.load_in_4bit, max_seq_length=1024)
    profile.setdefault("training", {}).update(max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                                              gradient_checkpointing=True, logging_steps=5, save_steps=10_000)
    profile.setdefault("generation", {}).update(max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size)
    return parse_params(copy.deepcopy(raw))


def worker(args) -> None:
    """One backend, in this process: fine-tune, then generate at batch 1 and at the predict batch size."""
    import dataclasses

    import torch

    from core.families import model_for

    params = params_for(args.backend, args.checkpoint, args.family, args)
    rows = scaled_rows(args.rows, labelled=True)
    model = model_for(params.profile, params.prompt.system)
    with tempfile.TemporaryDirectory() as run_dir:
        train = model.fine_tune(rows, [], params.profile.training, run_dir)
    result = {"backend": model.backend.name, "train": train}
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    generation = params.profile.generation
    prompts = scaled_rows(args.gen_rows, labelled=False)
    one = model.generate_responses(prompts[: args.batch1_rows], dataclasses.replace(generation, batch_size=1))
    many = model.generate_responses(prompts, generation)
    result["generate"] = {
        "batch1": {"rows": len(one.texts), "seconds": one.seconds, "tokens_per_s": one.tokens_per_second},
        f"batch{generation.batch_size}": {"rows": len(many.texts), "seconds": many.seconds, "tokens_per_s": many.tokens_per_second,
                                          "mean_new_tokens": sum(many.new_tokens) / len(many.new_tokens)},
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0,
    }
    Path(args.worker_out).write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen3", choices=["qwen3", "llama32"])
    parser.add_argument("--backends", default="hf,unsloth")
    parser.add_argument("--rows", type=int, default=400, help="training rows")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gen-rows", type=int, default=200)
    parser.add_argument("--gen-batch-size", type=int, default=64)
    parser.add_argument("--batch1-rows", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the real shape (smoke test, CPU)")
    parser.add_argument("--write-csv", metavar="DIR", help="only write the scaled train/test CSVs to DIR")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.write_csv:
        out = Path(args.write_csv)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "train.csv", scaled_rows(args.rows, labelled=True))
        write_csv(out / "test.csv", scaled_rows(args.gen_rows, labelled=False))
        return
    if args.worker:
        worker(args)
        return

    from tests.checkpoints import REAL_SHAPES, build_checkpoint

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shape = None if args.tiny else REAL_SHAPES[args.shape]
        checkpoint = build_checkpoint(args.shape, Path(tmp) / args.shape, shape=shape)
        for backend in args.backends.split(","):
            out = Path(tmp) / f"{backend}.json"
            # the workload flags as given; each worker writes its own result file
            command = [sys.executable, "-m", "benchmarks.backends", *sys.argv[1:], "--worker", "--backend", backend,
                       "--checkpoint", str(checkpoint), "--family", args.shape, "--worker-out", str(out)]
            subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
            results[backend] = json.loads(out.read_text())
    Path(args.out).write_text(json.dumps({"shape": args.shape, "args": vars(args), "results": results}, indent=2))
    print_table(args, results)


def print_table(args, results: dict) -> None:
    gen_key = f"batch{args.gen_batch_size}"
    rows = [
        ("train tokens/s", lambda r: r["train"]["train_tokens_per_s"], "{:,.0f}"),
        ("train peak GPU memory (GiB)", lambda r: r["train"].get("peak_gpu_memory_gb", 0.0), "{:.2f}"),
        ("train seconds", lambda r: r["train"]["train_runtime_s"], "{:.1f}"),
        ("generate tokens/s, batch 1", lambda r: r["generate"]["batch1"]["tokens_per_s"], "{:,.0f}"),
        (f"generate tokens/s, batch {args.gen_batch_size}", lambda r: r["generate"][gen_key]["tokens_per_s"], "{:,.0f}"),
        (f"{args.gen_rows} responses x {args.max_new_tokens} tokens (s)", lambda r: r["generate"][gen_key]["seconds"], "{:.1f}"),
    ]
    names = list(results)
    print(f"\n{args.shape} shape, {args.rows} rows, {args.steps} steps, batch {args.batch_size}, 4-bit={args.load_in_4bit}")
    print("| measure | " + " | ".join(names) + (" | unsloth / hf |" if set(names) >= {"hf", "unsloth"} else " |"))
    print("|---" * (len(names) + 1 + (set(names) >= {"hf", "unsloth"})) + "|")
    for label, get, fmt in rows:
        cells = [fmt.format(get(results[n])) for n in names]
        ratio = f" | {get(results['unsloth']) / get(results['hf']):.2f}x" if set(names) >= {"hf", "unsloth"} else ""
        print(f"| {label} | " + " | ".join(cells) + ratio + " |")


if __name__ == "__main__":
    main()

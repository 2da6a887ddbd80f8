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
import time
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
                                              gradient_checkpointing=args.gradient_checkpointing, logging_steps=5, save_steps=10_000)
    # greedy unless --num-beams says otherwise, whatever the profile decodes with: the figures in
    # docs/benchmarks.md are greedy, and beam search multiplies the work by the beams
    profile.setdefault("generation", {}).update(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    return parse_params(copy.deepcopy(raw))


def batch_sizes(text: str) -> list:
    """"1,64,auto" -> [1, 64, "auto"]; "" -> [] (train only)"""
    return [size if size == "auto" else int(size) for size in text.split(",") if size]


def worker(args) -> None:
    """One backend, in this process: fine-tune, then generate at each batch size asked for."""
    import dataclasses

    from core.families import model_for

    params = params_for(args.backend, args.checkpoint, args.family, args)
    rows = scaled_rows(args.rows, labelled=True)
    model = model_for(params.profile, params.prompt.system)  # imports the backend (Unsloth first)
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """When each optimiser step ended: the steps after the warm-up give the steady rate,
        free of one-off costs (Unsloth compiles each decoder block in the first steps)."""

        def __init__(self):
            self.ends = {}

        def on_step_end(self, args, state, control, **kwargs):
            self.ends[state.global_step] = time.perf_counter()

    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        train = model.fine_tune(rows, [], params.profile.training, run_dir, callbacks=[clock])
    steps, warm = train["steps"], min(args.warmup_steps, train["steps"] - 1)
    if warm > 0:
        # tokens/s x runtime is all tokens trained on; the rows are copies of the sample rows with
        # varied introductions, so every step carries about the same share of them
        tokens_per_step = train["train_tokens_per_s"] * train["train_runtime_s"] / steps
        train["steady_tokens_per_s"] = tokens_per_step * (steps - warm) / (clock.ends[steps] - clock.ends[warm])
    result = {"backend": model.backend.name, "train": train}
    generation = params.profile.generation
    prompts = scaled_rows(args.gen_rows, labelled=False)
    result["generate"] = {}
    for size in batch_sizes(args.gen_batch_sizes):
        # batch 1 is slow (one token per step for one row): time it on a few rows only
        out = model.generate_responses(prompts[: args.batch1_rows] if size == 1 else prompts,
                                       dataclasses.replace(generation, batch_size=size))
        result["generate"][f"batch_{size}"] = {
            "rows": len(out.texts), "rows_a_batch": out.batch_size, "seconds": out.seconds,
            "tokens_per_s": out.tokens_per_second, "mean_new_tokens": sum(out.new_tokens) / len(out.new_tokens),
            "peak_gpu_memory_gb": out.peak_gpu_memory_gb,
        }
    Path(args.worker_out).write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen3", choices=["qwen3", "llama32"])
    parser.add_argument("--backends", default="hf,unsloth")
    parser.add_argument("--rows", type=int, default=400, help="training rows")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the steady train tokens/s")
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="as the GPU profiles train (Unsloth's own variant offloads activations to the CPU)")
    parser.add_argument("--gen-rows", type=int, default=200)
    parser.add_argument("--gen-batch-sizes", default="1,auto",
                        help="comma-separated numbers or auto (what the GPU profiles use); batch 1 runs on --batch1-rows rows")
    parser.add_argument("--batch1-rows", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--num-beams", type=int, default=1, help="1: greedy (default); more: beam search")
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
    rows = [
        ("train tokens/s, whole run", lambda r: r["train"]["train_tokens_per_s"], "{:,.0f}"),
        (f"train tokens/s, after {args.warmup_steps} warm-up steps", lambda r: r["train"].get("steady_tokens_per_s", 0.0), "{:,.0f}"),
        ("train peak GPU memory (GiB)", lambda r: r["train"].get("peak_gpu_memory_gb", 0.0), "{:.2f}"),
        ("train seconds", lambda r: r["train"]["train_runtime_s"], "{:.1f}"),
    ]
    for size in batch_sizes(args.gen_batch_sizes):
        key, label = f"batch_{size}", f"batch {size}"
        rows.append((f"generate tokens/s, {label}", lambda r, k=key: r["generate"][k]["tokens_per_s"], "{:,.0f}"))
        if size == "auto":
            rows.append(("auto: rows a batch", lambda r, k=key: r["generate"][k]["rows_a_batch"], "{:d}"))
        if size != 1:
            rows.append((f"{args.gen_rows} responses x up to {args.max_new_tokens} tokens, {label} (s)",
                         lambda r, k=key: r["generate"][k]["seconds"], "{:.1f}"))
            rows.append((f"generate peak GPU memory, {label} (GiB)", lambda r, k=key: r["generate"][k]["peak_gpu_memory_gb"], "{:.2f}"))
    names = list(results)
    both = set(names) >= {"hf", "unsloth"}
    print(f"\n{args.shape} shape, {args.rows} rows, {args.steps} steps, batch {args.batch_size}, "
          f"4-bit={args.load_in_4bit}, gradient checkpointing={args.gradient_checkpointing}")
    print("| measure | " + " | ".join(names) + (" | unsloth / hf |" if both else " |"))
    print("|---" * (len(names) + 1 + both) + "|")
    for label, get, fmt in rows:
        cells = [fmt.format(get(results[n])) for n in names]
        ratio = f" | {get(results['unsloth']) / get(results['hf']):.2f}x" if both and get(results["hf"]) else (" | " if both else "")
        print(f"| {label} | " + " | ".join(cells) + ratio + " |")


if __name__ == "__main__":
    main()

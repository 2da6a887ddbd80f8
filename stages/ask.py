"""ask: answer vignettes with an exported model on this CPU: the ONNX export (ONNX Runtime GenAI), or with
--engine llamacpp the gguf stage's GGUF file through llama.cpp (optional: one line says how to install it).
No torch is needed.

    python -m stages.ask "I am a nurse in ... What should I do?"   # streams the answer
    python -m stages.ask --file vignettes.csv --out answers.csv      # a CSV with a Prompt column, or a .jsonl
    python -m stages.ask --engine llamacpp "I am a nurse in ..."    # the GGUF file (--gguf: which one)

Decoding follows the selected profile's `generation` in params.yaml (--max-new-tokens overrides
its length). The export must be the one made from the current adapter: `dvc repro export`.
"""

import argparse
import csv
import io
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from core import atomic
from core.config import GenerationConfig, derive, load_params, parse_generation
from core.data import ID, PROMPT, TARGET, read_csv_records, require_vignette
from core.errors import UserError
from core.export.runtime import ExportedModel
from core.metrics.echo import readable_answer
from core.paths import read_table
from core.resources import peak_rss_mb
from stages import run


def load(export: str | Path, adapter: str | Path | None) -> ExportedModel:
    """The exported model, checked against the adapter it should come from (skipped on a device
    that has only the export)."""
    return ExportedModel(export, adapter=adapter if adapter and Path(adapter).exists() else None)


def load_engine(args: argparse.Namespace, params_path: str):
    """The model `--engine` names: the ONNX export, or a GGUF file through llama.cpp (the gguf stage's
    Modelfile's file, unless --gguf names another)."""
    paths = read_table()
    if args.engine == "onnx":
        return load(args.export or paths.export, args.adapter or paths.aligned)
    from core.export.llamacpp import GgufModel

    if args.gguf:
        return GgufModel(args.gguf)
    precisions = load_params(params_path).export.gguf
    if not precisions:
        raise UserError(f"{params_path}: export.gguf is empty: there is no GGUF file to answer with")
    return GgufModel(Path(paths.gguf) / f"model-{precisions[-1]}.gguf")


def generation_settings(
    params_path: str | Path = "params.yaml", max_new_tokens: int | None = None, decoding: str | Path | None = None
) -> GenerationConfig:
    """The profile's decoding at one answer length: `max_new_tokens` if given, else params.yaml's
    (ask chooses no length: the length grid is predict's, on the validation split). `decoding`: a JSON
    file of generation settings to use instead of params.yaml's profile (the deploy stage hands over its
    own). 0 new tokens (the length predict may choose) is the answer prefix alone, so it needs one."""
    if decoding is not None:
        generation = parse_generation(atomic.read_json(decoding), str(decoding))
    else:
        generation = load_params(params_path).profile.generation
    length = generation.max_new_tokens if max_new_tokens is None else max_new_tokens
    return derive(generation, "ask --max-new-tokens", max_new_tokens=length, length_grid=[])


def ask(model: ExportedModel, vignette: str, generation: GenerationConfig, stream=None) -> str:
    """One vignette's answer as a person reads it (the case restated in its own words and numbers, the
    model's text as written); `stream` (say, print) gets the text as it comes (greedy or sampled decoding)."""
    require_vignette(vignette)
    row = {PROMPT: vignette}
    text, _ = model.answer(row, generation, on_text=stream)
    return readable_answer(row, text, generation.answer_prefix)


def read_rows(path: str) -> list[dict]:
    """Rows to answer: a .jsonl of rows, or a CSV with a Prompt column (the challenge's test file
    has it; Master_Index and the context columns are used where present)."""
    rows = atomic.read_jsonl(path) if path.endswith(".jsonl") else read_csv_records(path, [PROMPT])
    for number, row in enumerate(rows, start=1):
        require_vignette(row.get(PROMPT), f"{path}: row {number}, column {PROMPT!r}")
        if not row.get(ID):
            row[ID] = str(number)
    return rows


def ask_in_own_process(arguments: list[str], decoding: dict, launcher: tuple[str, ...] = (), env=None) -> dict:
    """This command on a file of rows in a process of its own (`arguments`: --file and the engine's options;
    `launcher`: what it runs under, e.g. taskset), `decoding` as its settings: its report. Its own error
    line, if any, reaches the console as it is."""
    with tempfile.TemporaryDirectory(prefix="ask-") as tmp:
        report, decoding_file = Path(tmp) / "report.json", Path(tmp) / "decoding.json"
        atomic.write_json(decoding_file, decoding)
        command = [*launcher, sys.executable, "-m", "stages.ask", *arguments]
        command += ["--decoding", str(decoding_file), "--report", str(report), "--out", str(Path(tmp) / "answers.csv")]
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise UserError(f"stages.ask {' '.join(arguments)} failed (above)")
        return atomic.read_json(report)


def main(outputs: atomic.Outputs) -> None:
    """The command line; the answers file and the report (--out, --report) are written together."""
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
    parser.add_argument("--export", help="the exported model's directory (default: paths.yaml's export)")
    parser.add_argument(
        "--adapter", help="the adapter the export must come from, checked where present (default: paths.yaml's aligned)"
    )
    parser.add_argument(
        "--engine", choices=["onnx", "llamacpp"], default="onnx", help="the ONNX export, or the GGUF file via llama.cpp"
    )
    parser.add_argument("--gguf", help="with --engine llamacpp: the GGUF file (default: the gguf stage's q8_0)")
    parser.add_argument("--params", default="params.yaml", help="where the decoding settings are read")
    parser.add_argument("--decoding", help="a JSON file of generation settings, instead of --params' profile")
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
    generation = generation_settings(args.params, args.max_new_tokens, args.decoding)
    rows = read_rows(args.file) if args.file else None
    model = load_engine(args, args.params)

    if rows is None:
        ask(model, args.vignette, generation, stream=lambda piece: print(piece, end="", flush=True))
        print()
        return
    out = model.answer_rows(rows, generation)
    # answers for a person, in the case's own words; the submit stage writes the host's normalised form
    lines = [
        [row[ID], readable_answer(row, text, generation.answer_prefix)]
        for row, text in zip(rows, out.texts, strict=True)
    ]
    table = io.StringIO()
    csv.writer(table, lineterminator="\n").writerows([[ID, TARGET], *lines])
    if args.out:
        outputs.write_text(args.out, table.getvalue())
    else:
        sys.stdout.write(table.getvalue())
    if args.report:
        outputs.write_text(
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

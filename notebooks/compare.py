"""Runs side by side in a terminal: `python -m notebooks.compare [--reference NAME]`.

One row per commit and experiment (from `dvc exp show --json`), and one more for each configuration
cross-validated over folds (`data.folds`: its fold runs pooled, named `cv<folds run>/<K>:<fold 0's run>`):
the profile, the validation rows scored, ROUGE-L of the model with its 95 % interval, of the answer
prefix alone and of the prompt echo, what the model's own tokens add, the paired difference to the
reference run (the workspace unless named) where both answered the same rows, the share of answers that
loop, the answer length chosen (each fold's), the train and answer times, and then the settings that
differ between the rows, as many as the terminal's width holds; the rest are named under the table.
For a cross-validation, the command that trains the final run on every labelled row at its length.
Nothing is run: DVC's records are read.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys

import pandas as pd

from notebooks.experiments import exp_show
from notebooks.runs import Run, cross_validations, final_length, paired_difference, runs

# header: what it is (the challenge scores ROUGE-L: these come first and are never dropped)
SCORES = {
    "experiment": "experiment (cvN/K:<run>: N of K folds' runs pooled, named by the first)",
    "profile": "profile",
    "rows": "validation rows scored",
    "rougeL": "ROUGE-L of the model's answers on the validation rows",
    "ci95": "its 95 % interval (bootstrap over the rows)",
    "prefix": "ROUGE-L of the answer prefix alone (no model token)",
    "echo": "ROUGE-L of the prompt echo",
    "+model": "the model's own tokens' contribution: rougeL - prefix",
    "vs_ref": "rougeL minus the reference run's on the same rows [paired 95 % interval]; ~: the interval "
    "holds 0, not distinguishable; ref: the reference; other-rows: not the reference's rows, never paired",
    "loops": "share of the model's answers that loop",
    "length": "answer length chosen (new tokens; each fold's for a cross-validation)",
    "train_s": "training time (s; a fold's mean)",
    "answer_s": "predict's time, validation and test (s; a fold's mean)",
}


def settings(params) -> dict:
    """The run's settings as flat dotted keys: the selected profile's, the alignment's, the data's."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                walk(f"{prefix}{field.name}.", getattr(value, field.name))
        else:
            flat[prefix.rstrip(".")] = str(value) if isinstance(value, list) else value

    walk("", params.profile)
    walk("align.", params.align)
    walk("data.", params.data)
    flat["export.precision"] = params.export.precision
    return flat


def score_row(run: Run, reference: Run | None) -> dict:
    """The scores columns of one run."""
    evaluation, predict = run.evaluation, run.predict
    model = evaluation.get("model") or {}
    low, high = model.get("rougeL_low"), model.get("rougeL_high")
    answer_s = sum((predict.get(split) or {}).get("seconds") or 0.0 for split in ("val", "test")) or None
    lengths = [length for length in run.lengths if length is not None]
    return {
        "experiment": run.name,
        "profile": run.params.model if run.params else None,
        "rows": evaluation.get("rows"),
        "rougeL": model.get("rougeL"),
        "ci95": f"{low:.3f}-{high:.3f}" if low is not None else "-",
        "prefix": (evaluation.get("answer_prefix") or {}).get("rougeL"),
        "echo": (evaluation.get("prompt_echo") or {}).get("rougeL"),
        "+model": (evaluation.get("model_minus_prefix") or {}).get("rougeL"),
        "vs_ref": versus(run, reference),
        "loops": (evaluation.get("loop_share") or {}).get("model"),
        "length": ",".join(str(length) for length in lengths) or "-",
        "train_s": run.finetune.get("train_runtime_s"),
        "answer_s": answer_s,
    }


def versus(run: Run, reference: Run | None) -> str:
    """The vs_ref cell: the paired difference to the reference, or why there is none."""
    if reference is None or not run.by_row:
        return "-"
    if run is reference:
        return "ref"
    paired = paired_difference(run, reference)
    if paired is None:
        return "other-rows"
    mark = "~" if paired["low"] <= 0 <= paired["high"] else ""
    return f"{paired['rougeL']:+.3f}[{paired['low']:+.3f},{paired['high']:+.3f}]{mark}"


def table(found: list[Run], reference: Run | None) -> tuple[pd.DataFrame, list[str]]:
    """The scores of every run, and the settings that differ between runs (each run's value)."""
    configs = [settings(run.params) if run.params else {} for run in found]
    keys = sorted({key for config in configs for key in config})
    changed = [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]
    frame = pd.DataFrame([score_row(run, reference) for run in found], columns=list(SCORES))
    for column in ("rows", "rougeL", "prefix", "echo", "+model", "loops", "train_s", "answer_s"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")  # a figure not recorded: NaN, shown as "-"
    for key in changed:
        frame[key] = [config.get(key) for config in configs]
    return frame, changed


def render(frame: pd.DataFrame, changed: list[str], width: int) -> str:
    """The table in at most `width` columns: the scores always, then the changed settings that fit."""
    shown = list(SCORES)

    def text(columns):
        formats = {"rows": lambda x: f"{x:.0f}", "train_s": lambda x: f"{x:.0f}", "answer_s": lambda x: f"{x:.0f}"}
        return frame[columns].to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.3f}", formatters=formats)

    left = []
    for key in changed:
        if max(len(line) for line in text([*shown, key]).splitlines()) <= width:
            shown.append(key)
        else:
            left.append(key)
    out = text(shown)
    if left:
        out += "\nalso differ (a wider terminal shows them): " + ", ".join(left)
    return out


def final_commands(pooled: list[Run]) -> list[str]:
    """For each cross-validation of all its folds: the run on every labelled row at the folds' length."""
    lines = []
    for run in pooled:
        length = final_length(run)
        if len(run.folds) < run.params.data.folds or length is None:
            continue
        lines.append(
            f"{run.name}: final run on every labelled row at length {length} (the median of the folds' "
            f"{','.join(map(str, run.lengths))}): dvc exp apply {run.folds[0].name} && dvc exp run -n "
            f"{run.folds[0].name}-final -S data.folds=0 -S data.val_fraction=0 "
            f"-S ++models.{run.params.model}.generation.max_new_tokens={length}"
        )
    return lines


def pick_reference(found: list[Run], name: str | None) -> Run | None:
    wanted = name or "workspace"
    for run in found:
        if run.name == wanted:
            return run
    if name:
        known = ", ".join(run.name for run in found)
        raise SystemExit(f"compare: --reference {name}: no such run (the runs: {known})")
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m notebooks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="the run the others are paired with (default: the workspace)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = runs(exp_show())
    pooled = cross_validations(found)
    found += pooled
    reference = pick_reference(found, args.reference)
    width = int(os.environ.get("COLUMNS") or shutil.get_terminal_size((160, 24)).columns)
    frame, changed = table(found, reference)
    print(render(frame, changed, width))
    for line in final_commands(pooled):
        print(line)
    print("\n".join(f"{header}: {meaning}" for header, meaning in SCORES.items()), file=sys.stderr)


if __name__ == "__main__":
    main()

"""Runs side by side in a terminal: `python -m notebooks.compare`.

One row per commit and experiment (from `dvc exp show --json`): the profile, validation ROUGE-L of
the model, of the answer prefix alone and of the prompt echo, what the model's own tokens add, the
share of answers that loop, the answer length chosen, the train and answer times, and then the
settings that differ between the rows (the selected profile's, resolved), as many as the terminal's
width holds; the rest are named under the table. Nothing is run: DVC's records are read.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

import pandas as pd

from core.config import ConfigError, parse_params
from notebooks.experiments import exp_records, exp_show, recorded

# header: what it is (the challenge scores ROUGE-L: these come first and are never dropped)
SCORES = {
    "experiment": "experiment",
    "profile": "profile",
    "rougeL": "ROUGE-L of the model's answers on the validation rows",
    "prefix": "ROUGE-L of the answer prefix alone (no model token)",
    "echo": "ROUGE-L of the prompt echo",
    "+model": "the model's own tokens' contribution: rougeL - prefix",
    "loops": "share of the model's answers that loop",
    "length": "answer length chosen (new tokens)",
    "train_s": "training time (s)",
    "answer_s": "predict's time, validation and test (s)",
}


def settings(params) -> dict:
    """The run's settings as flat dotted keys: the selected profile's, the alignment's, the data split's."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                walk(f"{prefix}{field.name}.", getattr(value, field.name))
        else:
            flat[prefix.rstrip(".")] = str(value) if isinstance(value, list) else value

    walk("", params.profile)
    walk("align.", params.align)
    flat.update({"data.val_fraction": params.data.val_fraction, "export.precision": params.export.precision})
    return flat


def table(exp_show_json: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """The scores of every row, and the settings that differ between rows (each row's value)."""
    rows, configs = [], []
    for name, _, data in exp_records(exp_show_json):
        try:
            params = parse_params(recorded(data, "params", "params.yaml"))
        except ConfigError:
            params = None
        evaluation = recorded(data, "metrics", "metrics/eval.json")
        predict = recorded(data, "metrics", "metrics/predict.json")
        finetune = recorded(data, "metrics", "metrics/finetune.json")
        scores = {key: (evaluation.get(key) or {}).get("rougeL") for key in ("model", "answer_prefix", "prompt_echo")}
        answer_s = sum((predict.get(split) or {}).get("seconds") or 0.0 for split in ("val", "test")) or None
        rows.append(
            {
                "experiment": name,
                "profile": params.model if params else None,
                "rougeL": scores["model"],
                "prefix": scores["answer_prefix"],
                "echo": scores["prompt_echo"],
                "+model": (evaluation.get("model_minus_prefix") or {}).get("rougeL"),
                "loops": (evaluation.get("loop_share") or {}).get("model"),
                "length": (predict.get("length") or {}).get("max_new_tokens"),
                "train_s": finetune.get("train_runtime_s"),
                "answer_s": answer_s,
            }
        )
        configs.append(settings(params) if params else {})
    keys = sorted({key for config in configs for key in config})
    changed = [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]
    frame = pd.DataFrame(rows, columns=list(SCORES))
    for column in list(SCORES)[2:]:  # a figure a run did not record: NaN, shown as "-"
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for key in changed:
        frame[key] = [config.get(key) for config in configs]
    return frame, changed


def render(frame: pd.DataFrame, changed: list[str], width: int) -> str:
    """The table in at most `width` columns: the scores always, then the changed settings that fit."""
    shown = list(SCORES)

    def text(columns):
        return frame[columns].to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.3f}")

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


def main() -> None:
    width = int(os.environ.get("COLUMNS") or shutil.get_terminal_size((160, 24)).columns)
    frame, changed = table(exp_show())
    print(render(frame, changed, width))
    print(
        "\n".join(
            f"{header}: {meaning}" for header, meaning in SCORES.items() if header not in ("experiment", "profile")
        ),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

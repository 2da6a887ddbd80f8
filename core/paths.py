"""Where the stages read and write: the table in paths.yaml (beside core/), which dvc.yaml reads
too (`vars`), so a path is written once. Paths are relative to the project's root, where DVC runs
the stages; `Paths.under` puts them under another root (a test's temporary directory). The table
is read when a stage starts (`read_table`), never at import."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import UserError

TABLE = Path(__file__).resolve().parent.parent / "paths.yaml"


@dataclass(frozen=True)
class Paths:
    prepared: str
    train: str
    val: str
    test: str
    adapter: str
    checkpoints: str
    finetune_log: str
    finetune_metrics: str
    aligned: str
    align_log: str
    align_metrics: str
    merged: str
    export: str
    gguf: str
    predictions: str
    val_predictions: str
    test_predictions: str
    val_longest_predictions: str
    predict_metrics: str
    eval_metrics: str
    rouge_by_panel: str
    rouge_by_row: str
    deploy_metrics: str
    submission: str
    submit_metrics: str

    def under(self, root: str | Path) -> Paths:
        """Every path below `root` instead of the project's root."""
        return Paths(**{name: str(Path(root) / value) for name, value in dataclasses.asdict(self).items()})


def read_table(path: Path = TABLE) -> Paths:
    table = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("paths") or {}
    names = {field.name for field in dataclasses.fields(Paths)}
    if set(table) != names:
        missing, unknown = sorted(names - set(table)), sorted(set(table) - names)
        raise UserError(f"{path}: paths: missing {missing}, unknown {unknown}")
    found = Paths(**{name: str(value) for name, value in table.items()})
    # the writers put these files into their directory by name: they must lie directly in it
    for directory, files in (
        ("prepared", ("train", "val", "test")),
        ("predictions", ("val_predictions", "test_predictions", "val_longest_predictions")),
    ):
        outside = [name for name in files if Path(getattr(found, name)).parent != Path(getattr(found, directory))]
        if outside:
            raise UserError(f"{path}: paths: {', '.join(outside)} must lie directly in {directory}")
    return found

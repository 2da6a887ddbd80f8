"""The runs that `dvc exp show --json` lists, each with what compare sets side by side: its settings, its
records (metrics/*.json) and its validation rows' scores (evaluate's metrics/rouge_by_row.json, read
from the run's own commit), and the cross-validation runs of one configuration pooled into one run.

Two runs are paired only on the same rows: the same validation ids, and on each row the same prompt-echo
score (the echo depends on the vignette and the clinician's answer alone, so a row that changed between
the runs' data files shows there). Nothing is run: DVC's and git's records are read.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from core.config import ConfigError, Params, parse_params
from core.metrics import uncertainty
from core.metrics.report import SYSTEMS
from core.paths import read_table
from notebooks.experiments import exp_records, file_at, recorded


@dataclasses.dataclass
class Run:
    name: str
    params: Params | None  # None: a commit from before params.yaml had its present form
    evaluation: dict  # metrics/eval.json
    predict: dict
    finetune: dict
    by_row: dict[str, dict] | None  # validation id -> {system: ROUGE-L}; None where the run has no such record
    folds: list[Run] = dataclasses.field(default_factory=list)  # a cross-validation: its fold runs, by fold

    @property
    def lengths(self) -> list:
        """The answer length each run chose (one a fold for a cross-validation)."""
        return [(run.predict.get("length") or {}).get("max_new_tokens") for run in self.folds or [self]]


def runs(exp_show_json: list[dict], cwd: str | Path = ".") -> list[Run]:
    """Every commit and experiment of `dvc exp show --json` as a Run."""
    table = read_table(Path(cwd) / "paths.yaml")
    found = []
    for name, rev, data in exp_records(exp_show_json):
        try:
            params = parse_params(recorded(data, "params", "params.yaml"))
        except ConfigError:
            params = None
        text = file_at(rev, table.rouge_by_row, cwd)
        records = {
            key: recorded(data, "metrics", getattr(table, f"{key}_metrics")) for key in ("eval", "predict", "finetune")
        }
        by_row = {row["id"]: row for row in json.loads(text)} if text else None
        found.append(Run(name, params, records["eval"], records["predict"], records["finetune"], by_row or None))
    return found


def same_rows(a: Run, b: Run) -> bool:
    """Whether two runs scored the same validation rows (ids, and each row's echo score)."""
    if not a.by_row or not b.by_row or a.by_row.keys() != b.by_row.keys():
        return False
    return all(a.by_row[key]["prompt_echo"] == b.by_row[key]["prompt_echo"] for key in a.by_row)


def paired_difference(run: Run, reference: Run) -> dict | None:
    """The run's ROUGE-L minus the reference's on the same rows, with the paired 95 % interval (the same
    resampled rows for both) and the share of resamples above 0; None where the rows differ."""
    if not same_rows(run, reference):
        return None
    ids = sorted(run.by_row)
    scores = {"run": [run.by_row[i]["model"] for i in ids], "reference": [reference.by_row[i]["model"] for i in ids]}
    spread = uncertainty.bootstrap(scores, {"difference": ("run", "reference")})["difference"]
    return {"rougeL": statistics.fmean(scores["run"]) - statistics.fmean(scores["reference"]), **spread}


def fold_of(run: Run) -> tuple[int, int] | None:
    """(folds, fold) of a cross-validation run; None for a run on the val_fraction split."""
    if run.params is None or run.params.data.folds < 2:
        return None
    return run.params.data.folds, run.params.data.fold


def configuration(run: Run) -> str:
    """The run's settings less the held-out fold: the key that groups one configuration's fold runs."""
    data = dataclasses.replace(run.params.data, fold=0)
    return repr(dataclasses.replace(run.params, data=data))


def cross_validations(found: list[Run]) -> list[Run]:
    """One Run for each configuration run on two or more of its folds: the fold runs' validation rows
    pooled (every labelled row once when all K folds ran), its scores the means over them with their
    intervals. The first run of each fold is taken (a workspace and its commit can be the same run)."""
    groups: dict[str, dict[int, Run]] = {}
    for run in found:
        if fold_of(run) and run.by_row:
            groups.setdefault(configuration(run), {}).setdefault(fold_of(run)[1], run)
    pooled = []
    for by_fold in groups.values():
        if len(by_fold) < 2:
            continue
        folds = [by_fold[fold] for fold in sorted(by_fold)]
        pooled.append(_pooled(folds))
    return pooled


def _pooled(folds: list[Run]) -> Run:
    total = folds[0].params.data.folds
    by_row = {key: row for run in folds for key, row in run.by_row.items()}
    ids = sorted(by_row)
    scores = {name: [by_row[i][name] for i in ids] for name in SYSTEMS}
    spread = uncertainty.bootstrap(scores, {"model_minus_prefix": ("model", "answer_prefix")})
    evaluation = {name: {"rougeL": statistics.fmean(scores[name])} for name in SYSTEMS}
    for name in SYSTEMS:
        evaluation[name].update({f"rougeL_{end}": value for end, value in spread[name].items()})
    evaluation["model_minus_prefix"] = {
        "rougeL": evaluation["model"]["rougeL"] - evaluation["answer_prefix"]["rougeL"],
        **{f"rougeL_{key}": value for key, value in spread["model_minus_prefix"].items()},
    }
    evaluation["rows"] = len(ids)
    loops = [(run.evaluation.get("loop_share") or {}).get("model") for run in folds]
    if None not in loops:  # weighted by each fold's rows
        weighted = sum(share * len(run.by_row) for share, run in zip(loops, folds, strict=True))
        evaluation["loop_share"] = {"model": weighted / len(ids)}
    name = f"cv{len(folds)}/{total}:{folds[0].name}"
    finetune = {"train_runtime_s": _mean(run.finetune.get("train_runtime_s") for run in folds)}
    predict = {
        split: {"seconds": _mean((run.predict.get(split) or {}).get("seconds") for run in folds)}
        for split in ("val", "test")
    }
    return Run(name, folds[0].params, evaluation, predict, finetune, by_row, folds)


def _mean(values) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.fmean(found) if found else None


def final_length(run: Run) -> int | None:
    """The length a final run on every labelled row answers at: the median of the folds' choices (the
    lower middle one for an even number of folds, so that it is a length some fold chose)."""
    lengths = [length for length in run.lengths if length is not None]
    return statistics.median_low(lengths) if lengths else None

"""notebooks/compare.py and notebooks/runs.py on hand-made runs: paired differences only on the same rows,
cross-validation folds pooled into one run, the final run's length (the runs under DVC: test_experiments.py)."""

import copy
import statistics

import numpy as np
import pytest

from core.config import parse_params
from core.metrics.uncertainty import bootstrap
from notebooks.compare import final_commands, table, versus
from notebooks.runs import Run, cross_validations, final_length, paired_difference, same_rows


def params(raw: dict, **data):
    raw = copy.deepcopy(raw)
    raw["data"].update(data)
    return parse_params(raw)


def scored(ids, model, echo=None, prefix=None) -> dict:
    echo = echo if echo is not None else [0.3] * len(ids)
    prefix = prefix if prefix is not None else echo
    return {
        i: {"id": i, "panel": "P", "model": m, "answer_prefix": p, "prompt_echo": e}
        for i, m, p, e in zip(ids, model, prefix, echo, strict=True)
    }


def run(name, by_row, run_params=None, length=5, loops=0.0) -> Run:
    model = statistics.fmean(row["model"] for row in by_row.values())
    evaluation = {"rows": len(by_row), "model": {"rougeL": model}, "loop_share": {"model": loops}}
    predict = {"length": {"max_new_tokens": length}, "val": {"seconds": 2.0}, "test": {"seconds": 3.0}}
    return Run(name, run_params, evaluation, predict, {"train_runtime_s": 10.0}, by_row)


IDS = [f"r{i}" for i in range(40)]
DIFFICULTY = list(np.random.default_rng(1).uniform(0.1, 0.6, size=40))


def test_a_paired_difference_is_the_bootstrap_of_the_same_rows_and_runs_on_other_rows_are_never_paired():
    reference = run("ref", scored(IDS, DIFFICULTY, echo=DIFFICULTY))
    better = run("better", scored(IDS, [d + 0.02 for d in DIFFICULTY], echo=DIFFICULTY))
    paired = paired_difference(better, reference)
    assert abs(paired["rougeL"] - 0.02) < 1e-12 and abs(paired["low"] - 0.02) < 1e-12 and paired["share_above_0"] == 1
    assert versus(better, reference) == "+0.020[+0.020,+0.020]" and versus(reference, reference) == "ref"
    # +0.05 and -0.05 on alternate rows: the interval holds 0, marked as not distinguishable
    noisy = [d + (0.05 if i % 2 else -0.05) for i, d in enumerate(DIFFICULTY)]
    mixed = run("mixed", scored(IDS, noisy, echo=DIFFICULTY))
    expected = bootstrap(
        {"run": [noisy[i] for i in sorted(range(40), key=lambda i: IDS[i])], "reference": sorted_by_id(DIFFICULTY)},
        {"d": ("run", "reference")},
    )["d"]
    found = paired_difference(mixed, reference)
    assert (found["low"], found["high"]) == (expected["low"], expected["high"]) and versus(mixed, reference).endswith(
        "~"
    )
    # other ids, or the same ids whose rows changed (another data file: the echo scores otherwise): never paired
    fewer = run("fewer", scored(IDS[:30], DIFFICULTY[:30], echo=DIFFICULTY[:30]))
    changed = run("changed", scored(IDS, DIFFICULTY, echo=[d + 0.01 for d in DIFFICULTY]))
    for other in (fewer, changed):
        assert not same_rows(other, reference) and paired_difference(other, reference) is None
        assert versus(other, reference) == "other-rows"


def sorted_by_id(values):
    return [values[i] for i in sorted(range(len(values)), key=lambda i: IDS[i])]


@pytest.fixture
def fold_runs(repo_params):
    """Two configurations cross-validated over 4 folds of 40 rows (the second on 3 folds only), and a run on
    the val_fraction split."""
    folds = [IDS[i::4] for i in range(4)]
    score = dict(zip(IDS, DIFFICULTY, strict=True))
    first = [
        run(
            f"a{k}",
            scored(ids, [score[i] + 0.01 for i in ids], echo=[score[i] for i in ids]),
            params(repo_params, folds=4, fold=k),
            length=length,
        )
        for k, (ids, length) in enumerate(zip(folds, (5, 10, 0, 5), strict=True))
    ]
    other = repo_params | {"align": {**repo_params["align"], "beta": 0.2}}
    second = [
        run(
            f"b{k}",
            scored(ids, [score[i] for i in ids], echo=[score[i] for i in ids]),
            params(other, folds=4, fold=k),
            length=20,
        )
        for k, ids in enumerate(folds[:3])
    ]
    single = run("single", scored(IDS[:10], DIFFICULTY[:10], echo=DIFFICULTY[:10]), params(repo_params))
    return first, second, single


def test_the_folds_of_one_configuration_pool_into_one_run_of_every_row(fold_runs):
    first, second, single = fold_runs
    pooled = cross_validations([*first, single, *second, first[0]])  # a fold seen twice counts once
    assert [run.name for run in pooled] == ["cv4/4:a0", "cv3/4:b0"]
    cv, partial = pooled
    assert sorted(cv.by_row) == sorted(IDS) and cv.evaluation["rows"] == 40 and cv.folds == first
    assert abs(cv.evaluation["model"]["rougeL"] - (statistics.fmean(DIFFICULTY) + 0.01)) < 1e-12
    model = cv.evaluation["model"]
    assert model["rougeL_low"] < model["rougeL"] < model["rougeL_high"]
    assert cv.lengths == [5, 10, 0, 5] and final_length(cv) == 5 and partial.evaluation["rows"] == 30
    # the two cross-validations answered different rows (30 of 40 in the second): not paired; each fold of the
    # first is paired with nothing pooled
    assert paired_difference(partial, cv) is None and paired_difference(first[0], cv) is None
    # the final run: only for a cross-validation of every fold, at the folds' median length
    (line,) = final_commands(pooled)
    assert (
        line.startswith("cv4/4:a0: final run on every labelled row at length 5")
        and (
            "dvc exp apply a0 && dvc exp run -n a0-final -S data.folds=0 -S data.val_fraction=0 "
            "-S ++models.smollm2.generation.max_new_tokens=5"
        )
        in line
    )


def test_the_table_shows_intervals_pairs_and_each_folds_length(fold_runs):
    first, second, single = fold_runs
    pooled = cross_validations([*first, *second])
    twin = Run(
        "twin",
        first[0].params,
        {},
        {},
        {},
        {key: {**row, "model": row["model"] - 0.05} for key, row in pooled[0].by_row.items()},
    )
    frame, changed = table([*first, *pooled, twin], pooled[0])
    rows = frame.set_index("experiment")
    assert rows.loc["cv4/4:a0", "vs_ref"] == "ref" and rows.loc["a1", "vs_ref"] == "other-rows"
    assert rows.loc["twin", "vs_ref"] == "-0.050[-0.050,-0.050]" and rows.loc["cv3/4:b0", "vs_ref"] == "other-rows"
    assert rows.loc["cv4/4:a0", "length"] == "5,10,0,5" and rows.loc["cv4/4:a0", "rows"] == 40
    low, high = (float(x) for x in rows.loc["cv4/4:a0", "ci95"].split("-"))
    assert low < rows.loc["cv4/4:a0", "rougeL"] < high
    assert "data.fold" in changed and "align.beta" in changed

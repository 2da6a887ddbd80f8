"""Scores with their uncertainty (core/metrics/uncertainty.py, in metrics/eval.json): a seeded bootstrap over the
validation rows, the model's contribution over a baseline computed on the same resampled rows."""

import json

import numpy as np

from core.data import read_vignettes
from core.metrics.echo import answer_prefix
from core.metrics.report import validation_report
from core.metrics.uncertainty import bootstrap
from core.predictions import Prediction
from tests.checkpoints import REPO


def test_a_paired_difference_is_computed_on_the_same_resampled_rows():
    """Rows of very different difficulty, the model exactly 0.1 above the baseline on each: apart, each mean's
    interval is wide; paired, the difference's interval is 0.1 at both ends, above 0 in every resample."""
    difficulty = np.random.default_rng(1).uniform(0.0, 0.6, size=40)
    scores = {"baseline": list(difficulty), "model": list(difficulty + 0.1)}
    found = bootstrap(scores, {"gain": ("model", "baseline")})
    assert found["model"]["high"] - found["model"]["low"] > 0.1  # unpaired: wider than the gain itself
    assert abs(found["gain"]["low"] - 0.1) < 1e-12 and abs(found["gain"]["high"] - 0.1) < 1e-12
    assert found["gain"]["share_above_0"] == 1.0
    # no gain on average (+0.05 on half the rows, -0.05 on the others): the paired interval holds 0
    noise = np.where(np.arange(40) % 2 == 0, 0.05, -0.05)
    found = bootstrap(
        {"baseline": list(difficulty), "model": list(difficulty + noise)}, {"gain": ("model", "baseline")}
    )
    assert found["gain"]["low"] < 0 < found["gain"]["high"] and 0.2 < found["gain"]["share_above_0"] < 0.8
    assert bootstrap({"model": []}, {}) == {}  # no validation rows: nothing to say


def test_the_report_carries_each_score_with_its_interval_and_a_rerun_writes_the_same_bytes():
    rows = read_vignettes(REPO / "data/sample/train.csv", labelled=True)[:31]
    predictions = {
        row["Master_Index"]: Prediction(answer_prefix(row, "echo") + " give fluids", 2, True) for row in rows
    }
    first, *_ = validation_report(rows, predictions, "echo")
    for system in ("model", "answer_prefix", "prompt_echo"):
        for kind in ("rouge1", "rouge2", "rougeL"):
            assert first[system][f"{kind}_low"] <= first[system][kind] <= first[system][f"{kind}_high"], system
    gain = first["model_minus_prefix"]
    assert gain["rougeL_low"] <= gain["rougeL"] <= gain["rougeL_high"] and 0 <= gain["rougeL_share_above_0"] <= 1
    # the paired interval is the narrower: the same rows are hard for the model and for its own prefix
    assert gain["rougeL_high"] - gain["rougeL_low"] < first["model"]["rougeL_high"] - first["model"]["rougeL_low"]
    again, *_ = validation_report(rows, predictions, "echo")
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)

"""`dvc repro` of the default profile (the real SmolLM2 weights) on the sample data, shortened: the
whole pipeline once, and a generation key's change, which would rerun predict onwards only (a rerun
of predict and submit to the same bytes is tests/test_reliability.py's, on the tiny model)."""

import json
from pathlib import Path

import pytest
import yaml

from core.data import ID, TARGET
from core.lock_record import files_unlike_record
from core.metrics.rouge import rouge
from core.predictions import read_predictions
from tests.dvc_helpers import run_dvc

pytestmark = pytest.mark.slow


def dvc(workspace: Path, *args: str) -> str:
    return run_dvc(workspace, *args).stdout


def shorten(workspace: Path, **generation) -> None:
    """Two optimiser steps of one row, 7 validation rows, and 16 new tokens from 2 beams: the whole
    path, beam search included, in CI time (on one core the real 135M model takes about 4 s a row to
    score and the deploy stage answers each validation row twice, so the rows are what costs)."""
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["val_fraction"] = 0.1
    params["models"]["smollm2"]["training"].update(max_steps=2, batch_size=1)
    params["models"]["smollm2"]["generation"].update(
        {"max_new_tokens": 16, "length_grid": [0, 8, 16], "num_beams": 2, **generation}
    )
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_runs_end_to_end_is_deterministic_and_then_up_to_date(workspace):
    shorten(workspace)
    done = run_dvc(workspace, "repro")
    out = done.stdout
    for stage in ("prepare", "finetune", "align", "export", "predict", "evaluate", "submit", "deploy"):
        assert f"Running stage '{stage}'" in out
    # a run that succeeds says nothing alarming: the export builder's chatter stays at DEBUG
    printed = done.stdout + done.stderr
    assert "ERROR" not in printed and "Traceback" not in printed and "matmul_nbits_quantizer" not in printed, printed[
        -3000:
    ]

    # the stages read dvc.lock's record of an output as DVC writes it (core/lock_record.py)
    assert files_unlike_record("models/aligned", workspace) == []

    submission = (workspace / "submissions" / "submission.csv").read_text(encoding="utf-8").splitlines()
    test_ids = [
        line.split(",")[0]
        for line in (workspace / "data/sample/test.csv").read_text().splitlines()[1:]
        if line.startswith("ID_")
    ]
    assert submission[0] == "Master_Index,Clinician"
    assert sorted(line.split(",", 1)[0] for line in submission[1:]) == sorted(test_ids)
    assert all(line.split(",", 1)[1].strip() for line in submission[1:])
    assert (workspace / "models/adapter/adapter_model.safetensors").exists()

    val_rows = (workspace / "data/prepared/val.jsonl").read_text().splitlines()
    metrics = yaml.safe_load(dvc(workspace, "metrics", "show", "--json"))
    values = next(iter(metrics.values()))["data"]
    assert values["metrics/finetune.json"]["data"]["steps"] == 2
    assert "prompt_echo" in values["metrics/eval.json"]["data"]
    # the deployability report: the export against each of the challenge's limits, beside PyTorch and the echo
    deploy = values["metrics/deploy.json"]["data"]
    assert set(deploy) >= {
        "export_engine",
        "precision",
        "parameters",
        "export_mb",
        "merged_mb",
        "peak_rss_mb",
        "ms_per_vignette",
        "tokens_per_s",
        "rougeL",
        "limits",
        "all_limits_pass",
        "rows",
        "decoding",
    }
    assert set(deploy["limits"]) == {"parameters", "quantized", "peak_rss_mb", "median_ms_per_vignette", "rougeL_loss"}
    assert all(set(limit) == {"value", "limit", "pass"} for limit in deploy["limits"].values())
    assert deploy["limits"]["parameters"]["pass"] and 134_000_000 < deploy["parameters"] < 136_000_000
    assert deploy["precision"] == "int8" and 0 < deploy["peak_rss_mb"] < 2048 and deploy["rows"] == len(val_rows) >= 5
    assert set(deploy["rougeL"]) == {"export", "torch", "loss", "prompt_echo", "compared_on"}
    # the engines compared where the model wrote: on the submitted answers, or on predict's uncut ones
    compared_on = deploy["rougeL"]["compared_on"]
    if deploy["submitted_model_tokens"]["answers_without"] < len(val_rows):
        assert compared_on == {"answers": "submitted", "max_new_tokens": deploy["decoding"]["max_new_tokens"]} | {
            "rows": len(val_rows)
        }
        assert deploy["rougeL"]["torch"] == pytest.approx(values["metrics/eval.json"]["data"]["model"]["rougeL"])
    else:
        assert compared_on == {"answers": "uncut", "max_new_tokens": 16, "rows": min(16, len(val_rows))}
        every_row = [json.loads(line) for line in val_rows]
        rows = every_row[:16]
        uncut = read_predictions(workspace / "data/predictions/val_longest.csv", every_row)
        torch_l = rouge([uncut[row[ID]].text for row in rows], [row[TARGET] for row in rows])["rougeL"]
        assert deploy["rougeL"]["torch"] == pytest.approx(torch_l) and any(uncut[row[ID]].new_tokens for row in rows)
    assert deploy["limits"]["rougeL_loss"]["pass"] is (deploy["rougeL"]["loss"] <= 0.01)
    assert deploy["ms_per_vignette"]["p90"] >= deploy["ms_per_vignette"]["median"] > 0
    # speed and memory judged on the model writing (the submitted answers are 16 tokens at most): 32 new tokens
    # timed, and tokens really written in them
    assert (
        deploy["timed"]["max_new_tokens"] == 32
        and deploy["timed"]["model_tokens"]["mean"] >= 8  # ONNX Runtime GenAI's own beams wrote 1 here
        and deploy["tokens_per_s"] > 0
    )
    assert deploy["timed"]["rows"] == min(16, len(val_rows)) and set(deploy["submitted_model_tokens"]) == {
        "mean",
        "answers_without",
    }
    # the model's contribution: beside the echo and the answer prefix alone
    evaluation = values["metrics/eval.json"]["data"]
    assert evaluation["answer_prefix"]["kind"] == "echo" and 0 < evaluation["answer_prefix"]["rougeL"] < 1
    assert evaluation["model_minus_prefix"]["rougeL"] == pytest.approx(
        evaluation["model"]["rougeL"] - evaluation["answer_prefix"]["rougeL"]
    )

    assert "Data and pipelines are up to date" in dvc(workspace, "repro")
    predict = yaml.safe_load((workspace / "metrics" / "predict.json").read_text())
    assert predict["num_beams"] == 2 and predict["val"]["decoding_work_ratio"] >= 2  # beam search's cost, recorded
    # the seconds are the generation's: the tokens it wrote are recorded beside those the length cut kept
    assert predict["val"]["generated_mean_new_tokens"] > 0 and (
        predict["val"]["generated_mean_new_tokens"] >= predict["val"]["mean_new_tokens"]
    )

    # A generation key reruns predict onwards and never retrains: what `dvc repro` would run, without running it
    # (the model alone at 12 tokens: the answers change, whatever length the first run chose)
    ran = (workspace / "params.yaml").read_text()
    shorten(workspace, answer_prefix="none", length_grid=[12], max_new_tokens=12)
    status = dvc(workspace, "status")
    assert "predict:" in status and "finetune:" not in status and "prepare:" not in status, status
    out = dvc(
        workspace, "repro", "--dry"
    )  # the stages that read generation keys; evaluate and submit follow predict's new answers
    assert [
        s
        for s in ("prepare", "finetune", "align", "export", "predict", "evaluate", "submit", "deploy")
        if f"Running stage '{s}'" in out
    ] == ["predict", "deploy"], out
    (workspace / "params.yaml").write_text(ran)
    assert "Data and pipelines are up to date" in dvc(workspace, "status")

"""`dvc exp run` across model profiles (tiny local Qwen3 and Llama checkpoints), read back from
`dvc exp show --json`, and a parameter sweep through the experiment queue."""

import csv
import io
import json
import re
import time

import pytest

from core.data import read_vignettes
from notebooks.experiments import experiments_table
from tests.checkpoints import REPO
from tests.conftest import copy_repo
from tests.dvc_helpers import run_dvc, short_run

pytestmark = pytest.mark.slow


def table(workspace):
    return experiments_table(json.loads(run_dvc(workspace, "exp", "show", "--json").stdout))


def test_exp_run_switches_profile_and_checkpoint_and_exp_show_compares_them(
    tiny_experiments, tiny_checkpoints, tmp_path
):
    # tiny-qwen3, then tiny-llama32: another profile, another checkpoint, its answers from the export
    workspace = copy_repo(tiny_experiments, tmp_path / "repo")
    predicted = json.loads((workspace / "metrics/predict.json").read_text())
    assert predicted["engine"] == "onnx" and predicted["answer_prefix"] == "echo"
    # the answer length chosen on the validation answers, each grid length scored
    assert predicted["length"]["chosen_by"] == "validation ROUGE-L" and set(
        predicted["length"]["rougeL_by_length"]
    ) == {"0", "4", "8"}
    assert predicted["length"]["rougeL_by_length"][str(predicted["length"]["max_new_tokens"])] == max(
        predicted["length"]["rougeL_by_length"].values()
    )
    evaluation = json.loads((workspace / "metrics/eval.json").read_text())
    assert (
        0 <= evaluation["loop_share"]["model"] <= 1
        and abs(evaluation["model"]["rougeL"] - max(predicted["length"]["rougeL_by_length"].values())) < 1e-9
    )
    deploy = json.loads((workspace / "metrics/deploy.json").read_text())
    assert deploy["rougeL"]["torch"] is None and "rougeL_loss" not in deploy["limits"]  # nothing to compare with
    # the llama32 stand-in's run reached a valid submission: every test id once, no empty answer
    submitted = list(csv.DictReader(io.StringIO((workspace / "submissions/submission.csv").read_text())))
    test_ids = [row["Master_Index"] for row in read_vignettes(REPO / "data/sample/test.csv", labelled=False)]
    assert sorted(row["Master_Index"] for row in submitted) == sorted(test_ids) and all(
        row["Clinician"].strip() for row in submitted
    )

    rows = table(workspace).set_index("experiment")
    for family in ("qwen3", "llama32"):
        row = rows.loc[f"tiny-{family}"]
        assert row["model"] == family and row["checkpoint"] == str(tiny_checkpoints[family])
        assert (
            row["train_loss"] > 0 and row["val_loss"] > 0 and row["train_runtime_s"] > 0 and row["predict_test_s"] > 0
        )
        assert 0 <= row["val_rougeL"] <= 1 and 0 < row["prompt_echo_rougeL"] <= 1
    # different architectures, different weights: the two runs really are two runs
    assert rows.loc["tiny-qwen3", "val_loss"] != rows.loc["tiny-llama32", "val_loss"]
    # the prompt-echo baseline depends on the data alone
    assert rows.loc["tiny-qwen3", "prompt_echo_rougeL"] == rows.loc["tiny-llama32", "prompt_echo_rougeL"]

    # A final run on every labelled row: no validation split, no score, and still a row of the table.
    run_dvc(
        workspace,
        "exp",
        "run",
        "-n",
        "tiny-all-rows",
        "-S",
        "model=qwen3",
        "-S",
        f"models.qwen3.name={tiny_checkpoints['qwen3']}",
        "-S",
        "data.val_fraction=0",
        *short_run("qwen3"),
    )
    assert (workspace / "data/prepared/val.jsonl").read_text() == ""
    evaluation = json.loads((workspace / "metrics/eval.json").read_text())
    assert evaluation["rows"] == 0 and evaluation["validation"].startswith("none") and "model" not in evaluation
    test_rows = len(read_vignettes(REPO / "data/sample/test.csv", labelled=False))
    assert (workspace / "submissions/submission.csv").read_text().count(
        "\n"
    ) == 1 + test_rows  # header + every test row
    row = table(workspace).set_index("experiment").loc["tiny-all-rows"]
    assert row["train_loss"] > 0 and row["val_rougeL"] != row["val_rougeL"]  # NaN: nothing was scored
    deploy = json.loads((workspace / "metrics/deploy.json").read_text())
    assert deploy["split"] == "test" and "rougeL" not in deploy and deploy["rows"] == test_rows  # timed, not scored
    # no validation rows to choose the answer length on: params.yaml's max_new_tokens, and the record says so
    length = json.loads((workspace / "metrics/predict.json").read_text())["length"]
    assert length == {
        "max_new_tokens": 8,
        "chosen_by": "params: no validation rows (data.val_fraction is 0)",
        "rougeL_by_length": {},
    }

    # the README's compact `dvc exp show`: the compared columns, none of every profile's keys
    noise = re.search(r"export KCR_NOISE='(.+)'", (REPO / "README.md").read_text()).group(1)
    shown = list(csv.DictReader(io.StringIO(run_dvc(workspace, "exp", "show", "--drop", noise, "--csv").stdout)))
    columns = set(shown[0])
    model = "model" if "model" in columns else "params.yaml:model"  # DVC qualifies a name it sees twice
    assert {
        model,
        "lora_r",
        "learning_rate",
        "epochs",
        "effective_batch_size",
        "train_loss",
        "val_loss",
        "best_epoch",
        "model.rougeL",
        "prompt_echo.rougeL",
        "loop_share.model",
        "length.max_new_tokens",
        "train_runtime_s",
        "test.seconds",
        "all_limits_pass",
        "peak_rss_mb",
        "ms_per_vignette.median",
        "rougeL.export",
    } <= columns, columns
    assert not [c for c in columns if c.startswith(("models.", "training.", "generation.")) or "/" in c], columns
    assert {row[model] for row in shown if row["Experiment"]} == {"qwen3", "llama32"}


def test_queued_sweep_runs_every_value(workspace, toy_checkpoints):
    # the queue runs from a commit: the tiny profile must be in it. Each queued run stops at finetune (what
    # the sweep compares: the losses); the whole pipeline under `dvc exp run` is the test above.
    run_dvc(
        workspace,
        "exp",
        "run",
        "--queue",
        "-S",
        "model=llama32",
        "-S",
        f"models.llama32.name={toy_checkpoints['llama32']}",
        *short_run("llama32"),
        "-S",
        "models.llama32.lora.r=4,8",
        "finetune",
    )
    run_dvc(workspace, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run_dvc(workspace, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    rows = table(workspace)
    swept = rows[rows["model"] == "llama32"]
    assert sorted(swept["lora_r"]) == [4, 8]
    assert swept["val_loss"].notna().all()

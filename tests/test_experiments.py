"""`dvc exp run` across model profiles (tiny local Qwen3 and Llama checkpoints), read back from
`dvc exp show --json`, and a parameter sweep through the experiment queue."""

import csv
import io
import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from core.data import read_vignettes
from core.metrics.uncertainty import bootstrap
from notebooks.experiments import experiments_table
from tests.checkpoints import REPO
from tests.conftest import copy_repo
from tests.dvc_helpers import git, run_dvc, short_run, tools_env

pytestmark = pytest.mark.slow


def table(workspace):
    return experiments_table(json.loads(run_dvc(workspace, "exp", "show", "--json").stdout))


def test_exp_run_switches_profile_and_checkpoint_and_exp_show_compares_them(
    tiny_experiments, tiny_checkpoints, toy_checkpoints, tmp_path
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
            row["train_loss"] > 0
            and row["val_loss"] > 0
            and row["train_runtime_s"] > 0
            and row["predict_test_s"] >= 0  # 0 where length 0 was chosen: the test rows need no model
        )
        assert 0 <= row["val_rougeL"] <= 1 and 0 < row["prompt_echo_rougeL"] <= 1
    # different architectures, different weights: the two runs really are two runs
    assert rows.loc["tiny-qwen3", "val_loss"] != rows.loc["tiny-llama32", "val_loss"]
    # the prompt-echo baseline depends on the data alone
    assert rows.loc["tiny-qwen3", "prompt_echo_rougeL"] == rows.loc["tiny-llama32", "prompt_echo_rougeL"]

    # A final run on every labelled row: no validation split, no score, and still a row of the table
    # (on the toy tokenizer: what is tested is the missing split; on the real vocabulary this test took
    # 135 s, on the toy 91 s).
    run_dvc(
        workspace,
        "exp",
        "run",
        "-n",
        "tiny-all-rows",
        "-S",
        "model=qwen3",
        "-S",
        f"models.qwen3.base.name={toy_checkpoints['qwen3']}",
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

    # README's comparison command, in a 160-column terminal: every score's header and every run's row visible,
    # the settings that differ between the runs beside them, nothing the challenge scores cut away
    command = re.search(r"^(python -m notebooks\.compare)$", (REPO / "README.md").read_text(), re.M).group(1)
    env = tools_env(COLUMNS="160")
    done = subprocess.run(
        [sys.executable, *command.split()[1:]], cwd=workspace, env=env, capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    table_lines = [line for line in lines if not line.startswith("also differ")]
    assert max(len(line) for line in table_lines) <= 160 and "…" not in done.stdout, done.stdout
    headers = table_lines[0].split()
    assert headers[:13] == [
        "experiment",
        "profile",
        "rows",
        "rougeL",
        "ci95",
        "prefix",
        "echo",
        "+model",
        "vs_ref",
        "loops",
        "length",
        "train_s",
        "answer_s",
    ], done.stdout
    # the settings that differ: the profile's name and the checkpoint it was pointed at, at least
    assert "name" in headers or any("name" in line for line in lines if line.startswith("also differ")), done.stdout
    assert not [h for h in headers if h.startswith("models.")], headers
    rows = {line.split()[0]: line.split() for line in table_lines[1:]}
    assert {"tiny-qwen3", "tiny-llama32", "tiny-all-rows"} <= set(rows), done.stdout
    assert rows["tiny-qwen3"][1] == "qwen3" and rows["tiny-llama32"][1] == "llama32"
    for name in ("tiny-qwen3", "tiny-llama32"):
        model_l, prefix_l, echo_l, gain = (float(rows[name][i]) for i in (3, 5, 6, 7))
        assert 0 < echo_l < 1 and 0 < prefix_l < 1 and abs(model_l - prefix_l - gain) < 2e-3


def exp_file(workspace, name: str, path: str) -> str:
    """`path` as experiment `name` committed it (its ref under refs/exps, no checkout)."""
    refs = git(workspace, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    (ref,) = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    return git(workspace, "show", f"{ref}:{path}")


def test_dpo_experiment_aligns_the_sft_adapter_and_predict_answers_with_the_aligned_one(tiny_experiments):
    # tiny-qwen3 ran align.method dpo (2 steps on 2 pairs) on the real Qwen tokenizer, up to the submission
    record = json.loads(exp_file(tiny_experiments, "tiny-qwen3", "metrics/align.json"))
    aligned = record["dpo"]
    assert record["align_method"] == "dpo" and aligned["steps"] == 2 and aligned["pairs"] == {"train": 2, "val": 2}
    assert aligned["val_reward_accuracy"] is not None and aligned["train_loss"] > 0
    assert exp_file(tiny_experiments, "tiny-qwen3", "dvclive/align/plots/metrics/rewards/margins.tsv").count("\n") >= 2
    stages = yaml.safe_load(exp_file(tiny_experiments, "tiny-qwen3", "dvc.lock"))["stages"]
    outs = {o["path"]: o["md5"] for stage in stages.values() for o in stage.get("outs", [])}
    assert outs["models/aligned"] != outs["models/adapter"]  # DPO moved the SFT adapter
    # predict (and the export) answered with the preference-tuned adapter, not the SFT one
    for stage in ("predict", "export"):
        deps = {d["path"]: d["md5"] for d in stages[stage]["deps"]}
        assert deps["models/aligned"] == outs["models/aligned"] and "models/adapter" not in deps, stage


def test_deploy_compares_the_engines_where_the_model_wrote(tiny_experiments):
    # tiny-qwen3 (the real Qwen tokenizer, predict on PyTorch): the export set beside PyTorch on the submitted
    # answers, or (they holding no model token) on predict's uncut ones at the grid's longest length, 8
    deploy = json.loads(exp_file(tiny_experiments, "tiny-qwen3", "metrics/deploy.json"))
    compared = deploy["rougeL"]["compared_on"]
    if deploy["submitted_model_tokens"]["answers_without"] < deploy["rows"]:
        assert compared == {"answers": "submitted", "max_new_tokens": deploy["decoding"]["max_new_tokens"]} | {
            "rows": deploy["rows"]
        }
    else:
        assert compared == {"answers": "uncut", "max_new_tokens": 8, "rows": min(16, deploy["rows"])}
    assert deploy["limits"]["rougeL_loss"]["pass"] is (deploy["rougeL"]["loss"] <= 0.01)  # judged, not left open


def compare(workspace, *args: str) -> dict[str, list[str]]:
    """`python -m notebooks.compare` in `workspace` (a terminal wide enough for every column): each row's cells."""
    done = subprocess.run(
        [sys.executable, "-m", "notebooks.compare", *args],
        cwd=workspace,
        env=tools_env(COLUMNS="400"),
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    headers = lines[0].split()
    assert headers[:9] == ["experiment", "profile", "rows", "rougeL", "ci95", "prefix", "echo", "+model", "vs_ref"]
    table_lines = [line for line in lines[1:] if line.split() and ": final run" not in line]
    return {line.split()[0]: dict(zip(headers, line.split(), strict=False)) for line in table_lines} | {
        "final": [line for line in lines if ": final run" in line]
    }


def test_compare_pairs_two_experiments_on_the_same_rows(tiny_experiments):
    # tiny-qwen3 and tiny-llama32 answered the same validation split: their difference is paired on its rows
    rows = compare(tiny_experiments, "--reference", "tiny-qwen3")
    by_row = {
        name: {row["id"]: row for row in json.loads(exp_file(tiny_experiments, name, "metrics/rouge_by_row.json"))}
        for name in ("tiny-qwen3", "tiny-llama32")
    }
    ids = sorted(by_row["tiny-qwen3"])
    assert ids == sorted(by_row["tiny-llama32"])
    scores = {name: [found[i]["model"] for i in ids] for name, found in by_row.items()}
    spread = bootstrap(scores, {"d": ("tiny-llama32", "tiny-qwen3")})["d"]
    difference = (sum(scores["tiny-llama32"]) - sum(scores["tiny-qwen3"])) / len(ids)
    mark = "~" if spread["low"] <= 0 <= spread["high"] else ""
    assert rows["tiny-llama32"]["vs_ref"] == f"{difference:+.3f}[{spread['low']:+.3f},{spread['high']:+.3f}]{mark}"
    assert rows["tiny-qwen3"]["vs_ref"] == "ref" and rows["tiny-qwen3"]["rows"] == str(len(ids))
    low, high = (float(x) for x in rows["tiny-qwen3"]["ci95"].split("-"))
    assert low <= float(rows["tiny-qwen3"]["rougeL"]) <= high
    evaluation = json.loads(exp_file(tiny_experiments, "tiny-qwen3", "metrics/eval.json"))
    model = evaluation["model"]
    assert rows["tiny-qwen3"]["ci95"] == f"{model['rougeL_low']:.3f}-{model['rougeL_high']:.3f}"


def test_cross_validation_queues_the_folds_and_compare_pools_them(tiny_pipeline, tmp_path):
    # docs/usage.md's one-liner with K=2, each run up to evaluate (what the folds are for); tiny_pipeline's
    # commit names the toy Qwen3. The queue sweeps the fold: one configuration, two runs
    workspace = copy_repo(tiny_pipeline, tmp_path / "repo")
    command = re.search(r"^(dvc exp run --queue -S data\.folds=5 .*)$", (REPO / "docs/usage.md").read_text(), re.M)
    assert command, "docs/usage.md: the cross-validation command"
    queue = command.group(1).replace("folds=5", "folds=2").replace("range(0,5)", "range(0,2)").split(" && ")[0]
    run_dvc(workspace, *[word.strip("'") for word in queue.split()[1:]])
    run_dvc(workspace, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run_dvc(workspace, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    rows = compare(workspace)
    (pooled,) = [name for name in rows if name.startswith("cv2/2:")]
    labelled = len(read_vignettes(REPO / "data/sample/train.csv", labelled=True))
    assert rows[pooled]["rows"] == str(labelled)  # every labelled row once, scored by the fold that held it out
    folds = [name for name, row in rows.items() if name != "final" and row.get("rows") == str(labelled // 2)]
    assert len(folds) == 2 and all(rows[name]["vs_ref"] == "other-rows" for name in folds)  # not the workspace's rows
    assert len(rows[pooled]["length"].split(",")) == 2
    (final,) = rows["final"]
    assert "-S data.folds=0 -S data.val_fraction=0 -S ++models.qwen3.generation.max_new_tokens=" in final

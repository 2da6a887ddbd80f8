"""Under `dvc repro` / `dvc exp run`, a stage that fails or is stopped keeps its last good outputs;
bad settings stop before any work with one line each; the same inputs give the same adapter."""
import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.dvc_helpers import git, run_dvc, use_tiny_model

pytestmark = pytest.mark.slow

OUTPUTS = ("data/prepared", "models/adapter", "dvclive/finetune", "models/merged", "models/export", "data/predictions",
           "submissions", "metrics", "plots")


def snapshot(workspace: Path) -> dict[str, str]:
    """Every file of every stage output, by content."""
    files = {}
    for out in OUTPUTS:
        for path in sorted((workspace / out).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(workspace))] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(files) > 20, files
    return files


def leftovers(workspace: Path) -> list[str]:
    """Temporaries of unfinished writes (core.io.atomic_path), anywhere in the workspace."""
    return [str(p) for p in workspace.rglob(".*.tmp")]


def errors(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("ERROR stages:")]


def edit_params(workspace: Path, edit) -> None:
    path = workspace / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def adapter_hash(workspace: Path) -> str:
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["finetune"]["outs"] if o["path"] == "models/adapter")


def test_failed_or_stopped_stages_keep_the_last_good_outputs(workspace, repo_params, tiny_checkpoints):
    use_tiny_model(workspace, repo_params, "qwen3", tiny_checkpoints["qwen3"], max_steps=2)
    run_dvc(workspace, "repro")
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "a good run")
    good = snapshot(workspace)
    adapter = adapter_hash(workspace)

    # 1. Bad data: prepare fails with one line naming the file and the row; nothing is lost.
    train_csv = workspace / "data/sample/train.csv"
    original = train_csv.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(original)))
    rows[2][0] = rows[1][0]  # the second row takes the first row's id
    with open(train_csv, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    done = run_dvc(workspace, "repro", check=False)
    assert done.returncode != 0
    assert len(errors(done)) == 1 and "data/sample/train.csv" in errors(done)[0] and "duplicate" in errors(done)[0], done.stderr
    assert snapshot(workspace) == good and not leftovers(workspace)
    train_csv.write_text(original, encoding="utf-8")

    # 2. An unknown profile: the project's message, with the profiles, before DVC's; nothing is lost.
    done = run_dvc(workspace, "exp", "run", "-S", "model=gpt5", check=False)
    assert done.returncode != 0
    assert errors(done) == ["ERROR stages: params.yaml: model: unknown model 'gpt5'; the profiles under models: are "
                            "smollm2, qwen3, llama32"], done.stderr
    assert snapshot(workspace) == good
    git(workspace, "checkout", "params.yaml")  # `dvc exp run -S` wrote model: gpt5 there

    # 3. Bad settings stop the first stage that reads them, before any model is loaded, one line each.
    def bad(raw):
        raw["models"]["qwen3"]["lora"]["r"] = 0
        raw["models"]["qwen3"]["generation"]["max_new_tokens"] = 0
    edit_params(workspace, bad)
    done = run_dvc(workspace, "repro", check=False)
    assert done.returncode != 0 and "loading" not in done.stderr
    assert sorted(errors(done)) == [
        "ERROR stages: params.yaml: generation (with models.qwen3.generation).max_new_tokens: expected at least 1, got 0",
        "ERROR stages: params.yaml: models.qwen3.lora.r: expected at least 1, got 0"], done.stderr
    assert snapshot(workspace) == good
    params = workspace / "params.yaml"
    git(workspace, "checkout", "params.yaml")
    edit_params(workspace, lambda raw: raw["training"].update(learning_rate="1e-3"))
    params.write_text(params.read_text().replace("learning_rate: '1e-3'", "learning_rate: 1e-3"))  # as typed: text to YAML 1.1
    done = run_dvc(workspace, "repro", check=False)
    assert done.returncode != 0 and "write it with a dot and a signed exponent, e.g. 1.0e-3" in errors(done)[0], done.stderr
    assert snapshot(workspace) == good
    git(workspace, "checkout", "params.yaml")

    # 4. predict stopped (SIGTERM to dvc and the stage) after the validation answers, before the test ones.
    edit_params(workspace, lambda raw: raw["models"]["qwen3"]["generation"].update(max_new_tokens=300))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=workspace, env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    seen = []
    for line in repro.stderr:
        seen.append(line)
        if "val: " in line and "responses in" in line:
            os.killpg(repro.pid, signal.SIGTERM)
            break
    repro.stderr.read()
    repro.wait(timeout=120)
    assert any("responses in" in line for line in seen), "".join(seen)
    assert repro.returncode != 0
    assert snapshot(workspace) == good and not leftovers(workspace)

    # 5. The same inputs give the same adapter, byte for byte: downstream stages see no change.
    git(workspace, "checkout", "params.yaml")
    time.sleep(0.1)
    run_dvc(workspace, "repro", "--force", "finetune")
    assert adapter_hash(workspace) == adapter
    assert run_dvc(workspace, "status").stdout.strip().startswith("Data and pipelines are up to date")

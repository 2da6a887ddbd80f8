"""Under `dvc repro` / `dvc exp run`, a stage that fails or is stopped keeps its last good outputs;
bad settings stop before any work with one line each; the same inputs give the same adapter, answers
and submission."""

import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.checkpoints import REPO
from tests.dvc_helpers import edit_params, git, run_dvc, tools_env

pytestmark = pytest.mark.slow

OUTPUTS = (
    "data/prepared",
    "models/adapter",
    "dvclive/finetune",
    "models/merged",
    "models/export",
    "models/gguf",
    "data/predictions",
    "submissions",
    "metrics",
    "plots",
)


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
    """Temporaries of unfinished writes (core.atomic.atomic_path), anywhere in the workspace."""
    return [str(p) for pattern in (".*.tmp", ".*.staged") for p in workspace.rglob(pattern)]


def errors(done: subprocess.CompletedProcess) -> list[str]:
    """The stages' error lines (a progress bar a failure cut short may precede one on its line)."""
    return [line[line.index("ERROR stages:") :] for line in done.stderr.splitlines() if "ERROR stages:" in line]


def adapter_hash(workspace: Path) -> str:
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["finetune"]["outs"] if o["path"] == "models/adapter")


@pytest.mark.faults
def test_failed_or_stopped_stages_keep_the_last_good_outputs(finished_workspace):
    workspace = finished_workspace  # a good run, committed
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
    assert len(errors(done)) == 1 and "data/sample/train.csv" in errors(done)[0] and "duplicate" in errors(done)[0], (
        done.stderr
    )
    assert snapshot(workspace) == good and not leftovers(workspace)
    train_csv.write_text(original, encoding="utf-8")

    # 2. An unknown profile: the project's message, with the profiles, before DVC's; nothing is lost.
    done = run_dvc(workspace, "exp", "run", "-S", "model=gpt5", check=False)
    assert done.returncode != 0
    assert errors(done) == [
        "ERROR stages: params.yaml: model: unknown model 'gpt5'; the profiles under models: are smollm2, qwen3, llama32"
    ], done.stderr
    assert snapshot(workspace) == good
    git(
        workspace, "checkout", "HEAD", "--", "params.yaml"
    )  # docs/usage.md's way back: `dvc exp run -S` wrote model: gpt5 there
    assert git(workspace, "status", "--porcelain", "params.yaml") == ""

    # 3. Bad settings stop the first stage that reads them, before any model is loaded, one line each.
    def bad(raw):
        raw["models"]["qwen3"]["lora"]["r"] = 0
        raw["models"]["qwen3"]["generation"]["max_new_tokens"] = -1

    edit_params(workspace, bad)
    done = run_dvc(workspace, "repro", check=False)
    assert done.returncode != 0 and "loading" not in done.stderr
    assert sorted(errors(done)) == [
        "ERROR stages: params.yaml: generation (with "
        "models.qwen3.generation).max_new_tokens: expected at least 0, got -1",
        "ERROR stages: params.yaml: models.qwen3.lora.r: expected at least 1, got 0",
    ], done.stderr
    assert snapshot(workspace) == good
    params = workspace / "params.yaml"
    git(workspace, "checkout", "params.yaml")
    edit_params(workspace, lambda raw: raw["training"].update(learning_rate="1e-3"))
    params.write_text(
        params.read_text().replace("learning_rate: '1e-3'", "learning_rate: 1e-3")
    )  # as typed: text to YAML 1.1
    done = run_dvc(workspace, "repro", check=False)
    assert done.returncode != 0 and "write it with a dot and a signed exponent, e.g. 1.0e-3" in errors(done)[0], (
        done.stderr
    )
    assert snapshot(workspace) == good
    git(workspace, "checkout", "params.yaml")

    # 4. `dvc repro` itself killed (SIGKILL: it can do nothing about it) while predict is between the
    # validation answers and the test ones: the stage ends too, before it writes anything.
    edit_params(workspace, lambda raw: raw["models"]["qwen3"]["generation"].update(max_new_tokens=100))
    env = tools_env()
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=workspace,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    seen = []
    for line in repro.stderr:
        seen.append(line)
        if "val: " in line and "responses in" in line:
            stage = psutil.Process(repro.pid).children(recursive=True)
            repro.kill()
            break
    repro.wait(timeout=120)
    assert any("responses in" in line for line in seen), "".join(seen)
    assert any("stages.predict" in " ".join(process.cmdline()) for process in stage)
    _, alive = psutil.wait_procs(stage, timeout=60)
    assert not alive, "the stage outlived the dvc repro that started it"
    assert "dvc (pid" in repro.stderr.read()  # the stage's own line on why it stopped
    assert snapshot(workspace) == good and not leftovers(workspace)

    # 5. The same inputs give the same adapter, byte for byte: downstream stages see no change.
    git(workspace, "checkout", "params.yaml")
    time.sleep(0.1)
    run_dvc(workspace, "repro", "--force", "finetune")
    assert adapter_hash(workspace) == adapter
    assert run_dvc(workspace, "status").stdout.strip().startswith("Data and pipelines are up to date")
    # and the same answers and submission (beam search's repeatability in one process: tests/test_model.py)
    answers = {name: hashed for name, hashed in good.items() if name.startswith(("data/predictions", "submissions"))}
    for stage in ("predict", "submit"):
        assert f"Running stage '{stage}'" in run_dvc(workspace, "repro", "--force", "--single-item", stage).stdout
    assert {name: snapshot(workspace)[name] for name in answers} == answers and len(answers) >= 3

    # 6. A change to core/data.py alone (reading and checking the CSVs, the split) reruns every stage that
    # runs it: prepare, and evaluate and submit, which read the rows through it (dvc.yaml lists it).
    data_module = workspace / "core/data.py"
    data_module.write_text(data_module.read_text(encoding="utf-8") + "\n# normalised differently\n", encoding="utf-8")
    out = run_dvc(workspace, "repro", "--dry").stdout
    rerun = [
        stage
        for stage in ("prepare", "finetune", "align", "export", "predict", "evaluate", "submit", "deploy")
        if f"Running stage '{stage}'" in out
    ]
    assert {"prepare", "evaluate", "submit"} <= set(rerun), out


@pytest.mark.faults
def test_settings_changed_under_a_running_pipeline_stop_it_and_nothing_is_recorded_under_them(finished_workspace):
    """`dvc repro` answering; meanwhile `dvc exp run -S ...` is refused by DVC's lock, but has already written its
    value into params.yaml: the running stage stops with one line, dvc.lock keeps the settings that ran, and
    every output of the stage is as it was (the check comes before any output is replaced)."""
    workspace = finished_workspace
    lock = (workspace / "dvc.lock").read_text()
    before = snapshot(workspace)
    # long answers: predict still answering when the second run comes
    edit_params(workspace, lambda raw: raw["models"]["qwen3"]["generation"].update(max_new_tokens=100, length_grid=[]))
    ran = (workspace / "params.yaml").read_text()
    env = tools_env()
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--force", "predict"],
        cwd=workspace,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = []
    for line in repro.stderr:
        seen.append(line)
        if "loading" in line:  # predict has read its settings and is loading the model
            break
    second = run_dvc(workspace, "exp", "run", "-S", "models.qwen3.generation.num_beams=2", check=False)
    assert second.returncode != 0, second.stdout  # refused: the first run holds the lock
    if "num_beams: 2" not in (workspace / "params.yaml").read_text():
        # DVC restored params.yaml after refusing (it need not: the value stays when the refusal comes later,
        # at a stage's lock); a hand edit while predict runs is the same change under a running pipeline
        edit_params(workspace, lambda raw: raw["models"]["qwen3"]["generation"].update(num_beams=2))
    seen += repro.stderr.readlines()
    assert repro.wait(timeout=600) != 0, "".join(seen)
    stopped = [line for line in seen if line.startswith("ERROR stages:")]
    assert len(stopped) == 1 and "params.yaml: changed while this stage was running" in stopped[0], "".join(seen)
    assert (workspace / "dvc.lock").read_text() == lock  # nothing recorded under num_beams 2
    assert "num_beams: 2" not in (workspace / "dvc.lock").read_text()
    assert snapshot(workspace) == before and leftovers(workspace) == []  # predictions and metrics untouched

    # the next stage of the same dvc process would stop at once, before any work, in one line
    from stages import settings_guard

    (workspace / "params.yaml").write_text(ran)
    dvc = (os.getpid(), "test")
    os.chdir(workspace)
    try:
        digest = settings_guard.start(dvc)
        assert settings_guard.start(dvc) == digest  # a later stage, the same settings: goes on
        (workspace / "params.yaml").write_text(ran + "# edited by hand\n")
        with pytest.raises(
            settings_guard.SettingsChanged, match=f"changed while this dvc process \\(pid {os.getpid()}\\)"
        ):
            settings_guard.start(dvc)
    finally:
        os.chdir(REPO)


@pytest.mark.faults
def test_the_restore_command_printed_for_a_damaged_output_restores_it(finished_workspace):
    """A truncated adapter: the stage's one line ends in a command, and that command, run as printed in the
    state the line describes, puts back the recorded bytes."""
    workspace = finished_workspace
    weights = workspace / "models/aligned/adapter_model.safetensors"
    good = weights.read_bytes()
    with open(weights, "r+b") as f:
        f.truncate(1000)
    env = tools_env()
    done = subprocess.run(
        [sys.executable, "-m", "stages.ask", "a child with fever"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and len(errors(done)) == 1, done.stderr
    line = errors(done)[0]
    assert line.startswith("ERROR stages: models/aligned/adapter_model.safetensors: "), line
    command = line.split("restore it with: ", 1)[1].split(" (or", 1)[0]
    assert command == "dvc checkout --force models/aligned"
    restored = subprocess.run(command, shell=True, cwd=workspace, env=env, capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    assert weights.read_bytes() == good
    assert run_dvc(workspace, "status").stdout.strip().startswith("Data and pipelines are up to date")


def printed_command(line: str) -> str:
    """The way back an error line ends with: `restore it with: <command>` or `rebuild it from its inputs: <command>`."""
    found = re.search(r"(?:restore it with|rebuild it from its inputs): (dvc [^(]+?)(?: \(|$)", line)
    assert found, line
    return found.group(1)


@pytest.mark.faults
def test_a_damaged_adapter_is_named_first_and_the_printed_commands_rebuild_the_chain(finished_workspace):
    """The QA round's loop: a truncated models/adapter was copied on by align, `dvc commit -f align` recorded the
    damage, and every printed `dvc checkout --force` put the same bad bytes back. Now align names the adapter
    before copying it, and where dvc.lock records damaged bytes the line says to rebuild the stage instead: the
    printed commands, run as printed, end with the pipeline whole."""
    workspace, env = finished_workspace, tools_env()
    adapter = workspace / "models/adapter/adapter_model.safetensors"
    good = adapter.read_bytes()
    os.truncate(adapter, 10_000_000)
    done = subprocess.run(
        [sys.executable, "-m", "stages.align"], cwd=workspace, env=env, capture_output=True, text=True
    )
    [line] = errors(done)
    assert done.returncode == 1 and line.startswith("ERROR stages: models/adapter/adapter_model.safetensors: ")
    assert printed_command(line) == "dvc checkout --force models/adapter"
    subprocess.run(printed_command(line), shell=True, cwd=workspace, env=env, check=True, capture_output=True)
    assert adapter.read_bytes() == good
    # the state the QA round reached (an align of the time copied the damaged adapter on): the adapter restored,
    # then `dvc commit -f align` recording a damaged models/aligned
    aligned = workspace / "models/aligned/adapter_model.safetensors"
    damaged = bytearray(good)
    damaged.extend(bytes(10_000_000 - len(good)))
    aligned.write_bytes(bytes(damaged))
    run_dvc(workspace, "commit", "-f", "align")
    commands = []
    for _ in range(3):
        done = run_dvc(workspace, "repro", check=False)
        if done.returncode == 0:
            break
        [line] = [x for x in (done.stdout + done.stderr).splitlines() if x.startswith("ERROR stages:")]
        commands.append(printed_command(line))
        subprocess.run(commands[-1], shell=True, cwd=workspace, env=env, check=True, capture_output=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # a checkout would have put the damage back
    assert commands == ["dvc repro --force --single-item align"], done.stdout[-3000:] + done.stderr[-3000:]
    assert aligned.read_bytes() == good
    assert run_dvc(workspace, "status").stdout.strip().startswith("Data and pipelines are up to date")


@pytest.mark.faults
def test_a_stage_run_by_hand_says_how_to_keep_its_outputs_through_dvc_exp_run(workspace, tmp_path):
    """`dvc exp run` checks out dvc.lock's outputs first: one a stage wrote when run by hand is not in
    DVC's cache and would be deleted. The stage says so and names the command that keeps it."""
    env = tools_env()
    env.pop("DVC_STAGE", None)
    done = subprocess.run(
        [sys.executable, "-m", "stages.prepare"], cwd=workspace, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("WARNING")] == [
        "WARNING stages: prepare ran outside DVC: DVC's cache has no copy "
        "of data/prepared, which the next `dvc exp run` or "
        "`dvc checkout` would replace or delete; to keep them, record them with: dvc commit -f prepare"
    ]
    run_dvc(workspace, "commit", "-f", "prepare")
    prepared = {p.name: p.read_bytes() for p in (workspace / "data/prepared").iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("Master_Index,Prompt\nID_1,a child with fever\n")
    done = run_dvc(workspace, "exp", "run", "-S", f"data.train_csv={bad}", "prepare", check=False)
    assert done.returncode != 0 and f"{bad}: column" in done.stderr
    assert {p.name: p.read_bytes() for p in (workspace / "data/prepared").iterdir()} == prepared


def test_a_hub_model_out_of_reach_stops_at_once_in_one_line_naming_the_key(workspace, tmp_path, repo_params):
    """`dvc exp run -S model=qwen3` with the hub unreachable and nothing cached: one line naming
    models.qwen3.base.name and the way to a local checkout, from prepare, before dvc.lock records qwen3."""
    offline = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # nothing listens on port 9
    began = time.monotonic()
    done = run_dvc(workspace, "exp", "run", "-S", "model=qwen3", check=False, env=offline)
    assert done.returncode != 0 and time.monotonic() - began < 60
    [line] = errors(done)
    name = repo_params["models"]["qwen3"]["base"]["name"]
    assert line.startswith(
        f"ERROR stages: params.yaml: models.qwen3.base.name: '{name}' is neither a local directory "
        "nor in the Hugging Face cache, and the hub did not give it (ConnectError"
    ), line
    assert line.endswith("set models.qwen3.base.name to a local directory holding its config.json and weights")
    assert "Traceback" not in done.stderr and "Running stage 'finetune'" not in done.stdout
    assert not (workspace / "dvc.lock").exists()


@pytest.mark.faults
def test_the_way_back_from_a_killed_dvc_exp_run_works_as_printed(tmp_path):
    """A `dvc exp run -S` killed mid-stage leaves a detached HEAD and its value in params.yaml; docs/usage.md's
    command, run as printed in that state, puts the branch and its settings back."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    run_dvc(repo, "init", "-q")
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: sleep 60 && echo done > out.txt\n    params: [x]\n    outs: [out.txt]\n"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a slow stage")
    env = tools_env()
    run = subprocess.Popen(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "x=2"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the stage runs
        if any("sleep" in " ".join(p.cmdline()) for p in psutil.Process(run.pid).children(recursive=True)):
            break
        time.sleep(0.2)
    dvc = psutil.Process(run.pid)
    family = [dvc, *dvc.children(recursive=True)]
    for process in family:  # the stage too, as a closed terminal ends them all
        process.kill()
    run.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)
    assert git(repo, "branch", "--show-current").strip() == ""  # detached
    assert "x: 2" in (repo / "params.yaml").read_text()
    usage = (REPO / "docs/usage.md").read_text()  # what the docs tell a user to type
    command = re.search(r"the way back to your branch and its\s+settings: `([^`]+)`", usage, re.I).group(1)
    done = subprocess.run(command, shell=True, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert (repo / "params.yaml").read_text() == "x: 1\n" and git(repo, "status", "--porcelain", "params.yaml") == ""


def test_the_settings_records_of_ended_dvc_runs_are_removed_when_a_run_starts(tmp_path, monkeypatch):
    """.dvc/tmp/settings-guard keeps one record a running dvc process; a new run removes those of
    processes that have ended (gone, or their pid now another process's) and keeps the live ones."""
    import psutil

    from stages import settings_guard

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("model: smollm2\n")
    records = tmp_path / ".dvc" / "tmp" / "settings-guard"
    records.mkdir(parents=True)
    me = psutil.Process()
    alive = records / f"{me.pid}-{me.create_time():.2f}.json"
    reused = records / f"{me.pid}-1.00.json"  # this pid, but a process started at another time
    ended = subprocess.Popen(["true"])
    ended.wait()
    gone = records / f"{ended.pid}-{time.time():.2f}.json"
    for record in (alive, reused, gone):
        record.write_text("{}")
    settings_guard.start((me.ppid(), f"{psutil.Process(me.ppid()).create_time():.2f}"))
    assert sorted(p.name for p in records.iterdir()) == sorted(
        [alive.name, f"{me.ppid()}-{psutil.Process(me.ppid()).create_time():.2f}.json"]
    )

"""Every error the project raises about something a user can fix is a UserError, and a stage
reports it as one line per problem, without a traceback; a stage DVC started ends with DVC."""

import ast
import importlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.errors import UserError
from stages import run
from tests.checkpoints import REPO

PROJECT_FILES = sorted([*REPO.glob("core/**/*.py"), *REPO.glob("stages/*.py")])
# Raised on purpose and not the user's to fix: a family class defined without its template (a
# programming error, caught by the tests), and the exit that SIGTERM becomes.
# TypeError: a family class defined wrong; SystemExit: the runner's own; PydanticCustomError: a params section's
# model validator, which pydantic collects and core.config rewrites as the ConfigError's lines
NOT_FOR_USERS = {"TypeError", "SystemExit", "PydanticCustomError"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def project_error_classes() -> list[type]:
    classes = set()
    for path in PROJECT_FILES:
        module = importlib.import_module(module_name(path))
        classes.update(
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
        )
    return sorted(classes, key=lambda cls: cls.__qualname__)


def test_every_error_class_of_the_project_is_a_user_error():
    classes = project_error_classes()
    assert {cls.__name__ for cls in classes} >= {
        "UserError",
        "ConfigError",
        "DataError",
        "BackendError",
        "TrainingDiverged",
        "ExportError",
        "StaleExport",
        "CheckpointError",
        "ArtifactError",
    }
    assert [cls.__name__ for cls in classes if not issubclass(cls, UserError)] == []


def test_the_project_raises_only_its_own_errors():
    """No `raise ValueError(...)` and the like in core/ or stages/: a built-in error would escape
    stages.run as a traceback."""
    project = {cls.__name__ for cls in project_error_classes()}
    builtin = []
    for path in PROJECT_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name not in project | NOT_FOR_USERS:
                    builtin.append(f"{path.relative_to(REPO)}:{node.lineno}: raise {name}")
    assert builtin == []


@pytest.fixture
def stage_runner(monkeypatch):
    """stages.run as a stage uses it, with this process's SIGTERM handler put back afterwards."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return run


@pytest.mark.faults
@pytest.mark.parametrize("error", project_error_classes(), ids=lambda cls: cls.__name__)
def test_a_stage_reports_each_user_error_in_one_line_per_problem(error, stage_runner, caplog):
    def main(outputs):
        raise error("params.yaml: first problem\nparams.yaml: second problem")

    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        stage_runner(main)
    assert stopped.value.code == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "params.yaml: first problem"),
        ("ERROR", "params.yaml: second problem"),
    ]
    assert all(record.exc_info is None for record in caplog.records)


def test_a_bug_keeps_its_traceback(stage_runner):
    def main(outputs):
        raise KeyError("not the user's doing")

    with pytest.raises(KeyError):
        stage_runner(main)


CHILD = textwrap.dedent("""
    import os, sys, time
    from core import atomic
    from stages import run

    def main(outputs):
        outputs.write_text(sys.argv[1], "written only if the stage finished")
        print(os.getpid(), flush=True)
        time.sleep(120)

    run(main)
""")
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    # like `dvc repro`: the stage through a shell, DVC_STAGE in its environment only
    subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c '{sys.argv[1]}' {sys.argv[2]}; echo shell-done"],
                     env={**os.environ, "DVC_STAGE": "predict"})
    time.sleep(300)
""")


def process_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.faults
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stage_ends_when_the_dvc_that_started_it_ends(tmp_path, how):
    out = tmp_path / "answers.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DVC_STAGE", None)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD.replace("'", '"'), str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stage = int(parent.stdout.readline())  # the stage is at work, its output half written
    parent.send_signal(how)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 15
    while process_alive(stage) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(stage), "the stage outlived the dvc that started it"
    assert not out.exists() and not [*tmp_path.glob(".*.tmp"), *tmp_path.glob(".*.staged")]


LINGERING = textwrap.dedent("""
    import threading, time
    from stages import run

    def main(outputs):
        # a thread the interpreter waits for at exit (as a library's may be), so that a second SIGTERM lands
        # during the interpreter's own shutdown
        threading.Thread(target=time.sleep, args=(3,)).start()
        print("working", flush=True)
        time.sleep(60)

    run(main)
""")


@pytest.mark.faults
def test_a_second_sigterm_during_shutdown_prints_no_traceback(tmp_path):
    """A stopped stage's interpreter shutting down, SIGTERM again (dvc stopping, a second kill): the process
    ends without 'Exception ignored in: <module threading>' and SystemExit's traceback."""
    child = subprocess.Popen(
        [sys.executable, "-c", LINGERING], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "working"
    child.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the stage has stopped; the interpreter waits for the lingering thread
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode in (143, -signal.SIGTERM), stderr
    assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr


@pytest.mark.faults
def test_a_full_disk_is_one_line_naming_the_output_and_the_old_one_stays(stage_runner, tmp_path, monkeypatch, caplog):
    import errno

    from core import atomic

    predictions = tmp_path / "data/predictions"
    atomic.write_files(predictions, {"val.csv": "the last good answers\n"})
    real_write = Path.write_text

    def disk_full_after(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_full_after)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        new = {"val.csv": "new answers\n" * 100, "test.csv": "more\n"}
        stage_runner(lambda outputs: outputs.write_files(predictions, new))
    monkeypatch.undo()
    assert stopped.value.code == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"{predictions}: could not be written, no space left on its disk") and "unchanged" in line
    assert all(record.exc_info is None for record in caplog.records)
    assert [p.name for p in predictions.parent.iterdir()] == ["predictions"]  # no temporary left behind
    assert (predictions / "val.csv").read_text() == "the last good answers\n" and not (
        predictions / "test.csv"
    ).exists()

    # a write outside core.atomic (a library's own file): the file it names, in one line
    caplog.clear()

    def main(outputs):
        raise OSError(errno.ENOSPC, "No space left on device", "models/checkpoints/abc/optimizer.pt")

    with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
        stage_runner(main)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "models/checkpoints/abc/optimizer.pt: could not be written, no space left on its disk; free some and run again"
    ]


@pytest.mark.parametrize("access", [False, True])
def test_a_gated_hub_model_is_checked_for_access_before_any_work(monkeypatch, access):
    """Llama 3.2 is gated: its card answers anyone, its weights only a token whose owner accepted the licence.
    Without access, prepare's check says so in one line naming the key, instead of finetune's download failing."""
    import httpx
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    from core.errors import CheckpointError
    from core.models import weights

    name = "meta-llama/Llama-3.2-1B-Instruct"
    checked = []

    def auth_check(self, repo_id, **kwargs):
        checked.append(repo_id)
        if not access:
            request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise GatedRepoError("403 Client Error: gated", response=httpx.Response(403, request=request))

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kwargs: type("Info", (), {"gated": "manual"}))
    monkeypatch.setattr(HfApi, "auth_check", auth_check)
    weights._check_hub.cache_clear()
    try:
        if access:
            weights._check_hub("llama32", name)
        else:
            with pytest.raises(CheckpointError) as caught:
                weights._check_hub("llama32", name)
            line = str(caught.value)
            assert "\n" not in line and line.startswith(f"params.yaml: models.llama32.base.name: {name!r} is gated")
            assert f"https://huggingface.co/{name}" in line and "hf auth login" in line
    finally:
        weights._check_hub.cache_clear()
    assert checked == [name]

"""The fault suite's own cases: every stage of a finished pipeline stopped mid-work by a kill of its `dvc`
(SIGTERM, SIGKILL), and every stage meeting a full disk on each of its output folders. Each case asserts
one clear line where there is one to say, every output and dvc.lock byte-identical, git's view of the
work tree unchanged and no staged or temporary file left behind.

The rest of the suite (`python -m pytest -m faults`; docs/usage.md lists every fault and its test) is marked
where it lives: bad CSVs and settings, a damaged artifact and its printed way back, a corrupt object in a
remote, two runs at once, params.yaml edited mid-run, a failed swap of a stage's outputs.
"""

import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.dvc_helpers import git, run_dvc, start_dvc
from tests.test_reliability import errors, leftovers, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.faults]

HOLD = Path(__file__).parent / "hold_at_first_write"
STAGES = ("prepare", "finetune", "align", "export", "gguf", "predict", "evaluate", "submit", "deploy")
# the folders each stage writes its outputs in (mounted full one at a time)
OUTPUT_FOLDERS = {
    "prepare": ("data",),
    "finetune": ("models", "dvclive", "metrics"),
    "align": ("models", "dvclive", "metrics"),
    "export": ("models",),
    "gguf": ("models",),
    "predict": ("data", "metrics"),
    "evaluate": ("metrics", "plots"),
    "submit": ("submissions", "metrics"),
    "deploy": ("metrics",),
}


def unchanged(workspace: Path, good: dict, lock: str) -> None:
    """The guarantees every fault keeps."""
    assert snapshot(workspace) == good
    assert (workspace / "dvc.lock").read_text() == lock
    assert leftovers(workspace) == []
    assert git(workspace, "status", "--porcelain") == ""  # git sees no change either (dvc.lock included)


def stage_process(dvc: psutil.Process, stage: str) -> psutil.Process | None:
    try:
        for process in dvc.children(recursive=True):
            if f"stages.{stage}" in " ".join(process.cmdline()):
                return process
    except psutil.Error:
        return None
    return None


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_whose_dvc_is_killed_at_work_changes_nothing(finished_workspace, stage, how):
    workspace = finished_workspace
    good, lock = snapshot(workspace), (workspace / "dvc.lock").read_text()
    # held at its first write (tests/hold_at_first_write): a stage quicker than a second is still at work
    dvc = start_dvc(workspace, "repro", "--force", "--single-item", stage, env={"PYTHONPATH": str(HOLD)})
    deadline, found = time.monotonic() + 120, None
    while time.monotonic() < deadline and dvc.poll() is None:
        found = stage_process(psutil.Process(dvc.pid), stage)
        if found and time.time() - found.create_time() > 1.0:  # its imports done, at work
            break
        time.sleep(0.05)
    assert found is not None, dvc.stderr.read()
    os.kill(dvc.pid, how)
    dvc.wait(timeout=60)
    _, alive = psutil.wait_procs([found], timeout=90)
    for process in alive:  # so that a stage that failed the test writes nothing into the next one's workspace
        process.kill()
    assert not alive, f"{stage} outlived the dvc that started it"
    unchanged(workspace, good, lock)


def mount_full(folder: Path) -> None:
    """`folder` on a tmpfs holding exactly its present files: the next byte written there finds the disk full."""
    page = os.sysconf("SC_PAGE_SIZE")
    used = sum(math.ceil(p.stat().st_size / page) * page for p in folder.rglob("*") if p.is_file())
    keep = Path(tempfile.mkdtemp(prefix="full-"))
    shutil.copytree(folder, keep / "files", symlinks=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={max(used, page)}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        shutil.rmtree(keep)
        if os.environ.get("CI"):
            pytest.fail(f"CI mounts a full disk with tmpfs, as root: {mounted.stderr.strip()}")
        pytest.skip(f"a full disk needs tmpfs mounts (root): {mounted.stderr.strip()}")
    for item in (keep / "files").iterdir():
        (shutil.copytree if item.is_dir() and not item.is_symlink() else shutil.copy2)(item, folder / item.name)
    shutil.rmtree(keep)


@pytest.mark.parametrize(
    ("stage", "folder"), [(stage, folder) for stage, folders in OUTPUT_FOLDERS.items() for folder in folders]
)
def test_a_full_disk_on_an_output_is_one_line_and_changes_nothing(finished_workspace, stage, folder):
    workspace = finished_workspace
    good, lock = snapshot(workspace), (workspace / "dvc.lock").read_text()
    mount_full(workspace / folder)
    try:
        done = run_dvc(workspace, "repro", "--force", "--single-item", stage, check=False)
        assert done.returncode != 0, done.stdout[-2000:]
        assert len(errors(done)) == 1, done.stdout[-3000:] + done.stderr[-3000:]
        [line] = errors(done)
        assert "could not be written, no space left on its disk" in line and f" {folder}/" in f" {line}", line
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        unchanged(workspace, good, lock)
    finally:
        subprocess.run(["umount", str(workspace / folder)], check=True)


def test_after_a_refused_dvc_exp_run_git_still_sees_dvc_lock_change(finished_workspace):
    """The QA round's sequence: a `dvc exp run` retraining and answering; during its predict a second
    `dvc exp run -S` is refused by DVC (after it stashed and put back the work tree). The first run stops
    (its settings changed), and `git status` lists dvc.lock, which its earlier stages rewrote."""
    workspace = finished_workspace
    first = start_dvc(
        workspace, "exp", "run", "-S", "training.max_steps=3", "-S", "++models.qwen3.generation.max_new_tokens=200"
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if stage_process(psutil.Process(first.pid), "predict"):
            break
        time.sleep(0.1)
    second = run_dvc(workspace, "exp", "run", "-S", "models.qwen3.lora.r=4", check=False)
    assert second.returncode != 0  # refused: the first run holds the repository
    _, stderr = first.communicate(timeout=600)
    changed = git(workspace, "status", "--porcelain")
    blob = subprocess.run(["git", "hash-object", "dvc.lock"], cwd=workspace, capture_output=True, text=True).stdout
    assert blob.strip() != git(workspace, "rev-parse", "HEAD:dvc.lock").strip()  # the earlier stages rewrote it
    assert " M dvc.lock" in changed.splitlines(), changed + stderr[-2000:]

"""Git's view of dvc.lock stays true (stages/git_view.py): the index a refused `dvc exp run` puts back can hold
the committed blob under the changed file's timestamps, so that git sees no change; a stage's end finds that
by content and makes git look again. The whole sequence, with two real `dvc exp run`s, is in test_faults.py."""

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stages import git_view, run

pytestmark = pytest.mark.faults


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def lying_index(repo: Path) -> None:
    """dvc.lock changed since the commit, and git's index holding the committed blob under the changed file's
    timestamps, as DVC's stash and unstash leave it."""
    from dulwich.index import index_entry_from_stat
    from dulwich.repo import Repo

    git(repo, "init", "-q")
    (repo / "dvc.lock").write_text("stages: {}\n")
    (repo / "params.yaml").write_text("model: smollm2\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a run")
    (repo / "dvc.lock").write_text("stages: {prepare: {}}\n")
    time.sleep(1.1)  # the index written a second later: git trusts the timestamps it records
    index = Repo(str(repo)).open_index()
    committed = index[b"dvc.lock"]
    index[b"dvc.lock"] = index_entry_from_stat(os.stat(repo / "dvc.lock"), committed.sha, mode=committed.mode)
    index.write()


def test_a_stage_end_makes_git_see_a_dvc_lock_its_index_hid(tmp_path, monkeypatch, caplog):
    lying_index(tmp_path)
    assert git(tmp_path, "status", "--porcelain") == ""  # the defect: git sees no change
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with caplog.at_level(logging.INFO):
        run(lambda outputs: None)
    assert git(tmp_path, "status", "--porcelain") == " M dvc.lock\n"
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "dvc.lock" in r.getMessage()]
    assert line.startswith("dvc.lock: git's index held an older version") and "git status" in line
    git(tmp_path, "add", "-A")  # and `git add -A` stages it, as README's way to record a run does
    assert git(tmp_path, "diff", "--cached", "--name-only") == "dvc.lock\n"


def test_a_true_index_is_left_alone(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "dvc.lock").write_text("stages: {}\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "a run")
    (tmp_path / "dvc.lock").write_text("stages: {prepare: {}}\n")  # a change git sees
    before = os.stat(tmp_path / "dvc.lock").st_mtime_ns
    monkeypatch.chdir(tmp_path)
    assert git_view.repair() == [] and os.stat(tmp_path / "dvc.lock").st_mtime_ns == before
    monkeypatch.chdir(tmp_path.parent)  # not a git repository: nothing to do
    assert git_view.stale_entries() == []

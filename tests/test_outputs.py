"""A stage's outputs change together or not at all (core.atomic.Outputs, through stages.run): a failed
write, a failed swap or a check that refuses after the work leaves every output as it was, with no
staging directory behind."""

import errno
import logging
import os
import signal
from pathlib import Path

import pytest

from core import atomic
from stages import run, settings_guard

pytestmark = pytest.mark.faults


@pytest.fixture
def stage_runner(monkeypatch):
    """stages.run as a stage uses it (outside DVC), with this process's SIGTERM handler put back afterwards."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return run


@pytest.fixture
def last_run(tmp_path) -> dict[Path, str]:
    """The outputs of a last good run: a file, a directory and a metrics file."""
    outputs = {
        tmp_path / "submissions/submission.csv": "id,answer\n1,last good\n",
        tmp_path / "data/predictions/val.csv": "last good answers\n",
        tmp_path / "metrics/submit.json": '{"rows": 1}\n',
    }
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return outputs


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def write_new_run(outputs: atomic.Outputs, root: Path) -> None:
    outputs.write_text(root / "submissions/submission.csv", "id,answer\n1,new\n")
    outputs.write_files(root / "data/predictions", {"val.csv": "new answers\n", "test.csv": "new\n"})
    outputs.write_json(root / "metrics/submit.json", {"rows": 2})


def test_outputs_are_swapped_in_together(tmp_path, last_run, stage_runner):
    stage_runner(lambda outputs: write_new_run(outputs, tmp_path))
    assert tree(tmp_path) == {
        "submissions/submission.csv": "id,answer\n1,new\n",
        "data/predictions/val.csv": "new answers\n",
        "data/predictions/test.csv": "new\n",
        "metrics/submit.json": '{\n  "rows": 2\n}\n',
    }


def test_a_full_disk_on_the_last_output_replaces_none(tmp_path, last_run, stage_runner, monkeypatch, caplog):
    """The QA round's sequence: a full disk on metrics/ failed submit after the submission was replaced."""
    before = tree(tmp_path)
    real_write = Path.write_text

    def full_on_metrics(self, text, *args, **kwargs):
        if "metrics" in self.parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_on_metrics)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
        stage_runner(lambda outputs: write_new_run(outputs, tmp_path))
    monkeypatch.undo()
    assert tree(tmp_path) == before  # the submission too: nothing was replaced
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"{tmp_path / 'metrics/submit.json'}: could not be written, no space left on its disk")


def test_a_failed_swap_puts_back_the_outputs_already_replaced(tmp_path, last_run, monkeypatch):
    before = tree(tmp_path)
    real_replace, moved, failed = os.replace, [], []

    def fail_on_the_metrics(src, dst):
        if str(dst).endswith("metrics/submit.json") and not failed:  # the new metrics' rename, once
            failed.append(dst)
            raise OSError(errno.EIO, "Input/output error", str(dst))
        moved.append(dst)
        return real_replace(src, dst)

    with atomic.Outputs() as outputs:
        write_new_run(outputs, tmp_path)
        monkeypatch.setattr(os, "replace", fail_on_the_metrics)
        with pytest.raises(OSError, match="Input/output error"):
            outputs.commit()
    monkeypatch.undo()
    assert any(str(path).endswith("submission.csv") for path in moved)  # one was swapped in, then put back
    assert tree(tmp_path) == before
    assert not [*tmp_path.rglob("*.staged")]


def test_settings_changed_during_the_work_replace_no_output(tmp_path, last_run, stage_runner, monkeypatch, caplog):
    """The QA round's first sequence: params.yaml changed while a stage ran. The guard's check comes after the
    work and before the first output is replaced."""
    params = tmp_path / "params.yaml"
    params.write_text("model: smollm2\n")
    monkeypatch.setattr(settings_guard, "PARAMS", params)
    before = tree(tmp_path)

    def stage(outputs):
        write_new_run(outputs, tmp_path)
        params.write_text("model: smollm2\nlora: {r: 4}\n")  # another `dvc exp run -S` meanwhile

    with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
        stage_runner(stage)
    assert tree(tmp_path) == {**before, "params.yaml": "model: smollm2\nlora: {r: 4}\n"}
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "params.yaml: changed while this stage was running" in line
    assert not [*tmp_path.rglob("*.staged")]

"""One run, one set of settings: the stages of one `dvc repro` / `dvc exp run` run with the
params.yaml the run started with.

DVC writes `dvc exp run -S` values into params.yaml before it takes its lock, so a second run that
DVC then refuses has already changed the settings under a first run still going; and DVC records
each stage's params in dvc.lock when the stage ends, as params.yaml is then. So the first stage of
a DVC process records a digest of params.yaml (in .dvc/tmp, keyed by that dvc process), and every
stage compares params.yaml with it when it starts and again when it ends: a change stops the stage
with one line (a failed stage is not recorded in dvc.lock), so nothing is recorded under settings
that did not run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psutil

from core.errors import UserError

PARAMS = Path("params.yaml")
RECORDS = Path(".dvc/tmp/settings-guard")


class SettingsChanged(UserError):
    """params.yaml changed under a running pipeline."""


def params_digest() -> str:
    try:
        return hashlib.sha256(PARAMS.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def _changed_message(where: str) -> str:
    return (
        f"{PARAMS}: changed while {where} was running (another `dvc exp run -S`, or an edit): this stage stops, "
        "so that nothing is recorded under settings that did not run; run the pipeline again once the other run "
        "is done (`git diff params.yaml` shows the change)"
    )


def start(dvc: tuple[int, str] | None) -> str:
    """params.yaml's digest now, checked against the first stage's of the same dvc process."""
    digest = params_digest()
    if dvc is None:
        return digest
    record = RECORDS / f"{dvc[0]}-{dvc[1]}.json"
    try:
        first = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        RECORDS.mkdir(parents=True, exist_ok=True)
        _forget_ended_runs()
        record.write_text(json.dumps({"params_sha256": digest}), encoding="utf-8")
        return digest
    if first.get("params_sha256") != digest:
        raise SettingsChanged(_changed_message(f"this dvc process (pid {dvc[0]})"))
    return digest


def finish(digest: str) -> None:
    """The stage's own settings unchanged since it started (checked before DVC records it)."""
    if params_digest() != digest:
        raise SettingsChanged(_changed_message("this stage"))


def started_at(process: psutil.Process) -> str:
    """A process's start time as the runner and these records name it (with its pid: one process)."""
    return f"{process.create_time():.2f}"


def _running(pid: int, started: str) -> bool:
    try:
        return started_at(psutil.Process(pid)) == started
    except psutil.Error:
        return False


def _forget_ended_runs() -> None:
    """Remove the records of dvc processes that have ended (a new run starts: theirs are done)."""
    for record in RECORDS.glob("*.json"):
        pid, _, started = record.stem.partition("-")
        if pid.isdigit() and not _running(int(pid), started):
            record.unlink(missing_ok=True)

"""The runner every stage goes through (`stages.run`): logging, signals, one line per problem.

A stage writes its outputs through `core.atomic.Outputs`, staged beside their targets; the runner
runs every check (the settings guard included) once the work is done and only then swaps all the
outputs in together, and dvc.yaml marks the outputs `persist` so DVC does not delete them before
the stage runs: a stage that fails, is stopped or is refused by a check leaves every output of its
last good run as it was. A stage that
DVC started ends when that `dvc` process ends (`_end_with_dvc`), so it never writes behind
dvc.lock's back. Processes are looked up and waited for through psutil.
"""

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from core import atomic, distributed
from core.errors import UserError
from stages import git_view, settings_guard

log = logging.getLogger("stages")

# How long a stage whose `dvc` has gone may take to stop cleanly before it is ended at once.
GRACE_SECONDS = 60.0


def _stop(signum, frame):
    # SIGTERM (a kill, a job scheduler, DVC's own shutdown) would end Python without running any
    # `finally`: as an exit instead, the temporaries of an unfinished write are removed.
    raise SystemExit(128 + signum)


def dvc_process() -> tuple[int, str] | None:
    """The `dvc` process that started this stage, as (pid, start time): DVC puts DVC_STAGE into the
    environment of the commands it runs (through a shell, or a launcher such as accelerate), so it
    is the nearest ancestor without that variable. None outside DVC."""
    if "DVC_STAGE" not in os.environ:
        return None
    try:
        process = psutil.Process().parent()
        while process is not None and process.pid > 1:
            try:
                started_by_dvc = "DVC_STAGE" in process.environ()
            except psutil.AccessDenied:  # not a process of ours to judge: keep walking up
                started_by_dvc = True
            if not started_by_dvc:
                return process.pid, settings_guard.started_at(process)
            process = process.parent()
    except psutil.Error:  # gone while we looked
        return None
    return None


def _wait_for_exit(pid: int, started: str) -> None:
    """Block until process `pid` (started at `started`) has ended."""
    try:
        process = psutil.Process(pid)
        if settings_guard.started_at(process) == started:  # not a later process under the same pid
            process.wait()
    except psutil.Error:  # already gone
        return


def _end_with_dvc() -> None:
    """If DVC started this stage, end it when that `dvc` process ends (killed, its terminal
    closed): the stage gets SIGTERM, so it exits as if stopped, writing nothing more."""
    parent = dvc_process()
    if parent is None:
        if "DVC_STAGE" in os.environ:  # DVC started it, and no ancestor is that `dvc` any more: it ended first
            # (killed while this process was still importing)
            log.error(
                "the dvc that started this stage has ended: stopping before any work; its outputs stay as they were"
            )
            sys.exit(128 + signal.SIGTERM)
        return

    def watch():
        _wait_for_exit(*parent)
        log.error("dvc (pid %d) has ended: stopping this stage; its outputs stay as they were", parent[0])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE_SECONDS)  # still here: stuck outside Python, where the signal cannot land
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-dvc", daemon=True).start()


def _cached_outs(stage: str) -> list[str]:
    """The outputs DVC caches for `stage` of ./dvc.yaml (none if there is no such stage or no DVC
    project here), as DVC itself resolves them (`${...}` from paths.yaml and params.yaml). Asked only
    of a stage run by hand, so DVC's import (about a second) is never paid under `dvc repro`."""
    try:
        from dvc.repo import Repo

        with Repo(".") as repo:
            found = [candidate for candidate in repo.index.stages if candidate.name == stage]
            return [out.def_path for out in found[0].outs if out.use_cache] if found else []
    except Exception:  # noqa: BLE001 - a warning's detail: without it the stage still runs
        return []


def _note_if_run_by_hand() -> None:
    """A stage run by hand (`python -m stages.prepare`, not `dvc repro`) writes outputs DVC has no
    copy of; the next `dvc exp run` or `dvc checkout` replaces them with dvc.lock's, or deletes
    them. Say so, and how to keep them."""
    stage = Path(sys.argv[0]).stem
    outs = _cached_outs(stage) if "DVC_STAGE" not in os.environ and distributed.is_main_process() else []
    if outs:
        log.warning(
            "%s ran outside DVC: DVC's cache has no copy of %s, which the next `dvc exp run` or `dvc checkout` "
            "would replace or delete; to keep them, record them with: dvc commit -f %s",
            stage,
            ", ".join(outs),
            stage,
        )


def _end_progress_bars() -> None:
    """Close the progress bars a failure left open (the trainer's, say), so that the error line starts a line
    of its own rather than follow a bar's last redraw."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run(work: Callable[[atomic.Outputs], None]) -> None:
    """Run a stage's `work`, which writes its outputs into the `Outputs` it is handed; they replace the
    last run's together, after every check. A problem the user can fix ends it with one clear line (a
    line per problem), not a traceback."""
    # In a data-parallel run only rank 0 reports progress; the others speak up only on trouble.
    # KCR_LOG_LEVEL=DEBUG: the libraries' own chatter too (the export builder's, core/export/build.py)
    asked = os.environ.get("KCR_LOG_LEVEL", "INFO").upper()
    level = (
        (asked if asked in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
        if distributed.is_main_process()
        else logging.WARNING
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    _end_with_dvc()
    try:
        settings = settings_guard.start(dvc_process())
        with atomic.Outputs() as outputs:
            work(outputs)
            # the last check, before the first output is replaced: the settings the stage ran with
            settings_guard.finish(settings)
            outputs.commit()
        _note_if_run_by_hand()
    except (UserError, FileNotFoundError) as err:
        _end_progress_bars()
        # (a FileNotFoundError names its file whoever raised it)
        for line in str(err).splitlines() or [type(err).__name__]:
            log.error("%s", line)
        sys.exit(1)
    except OSError as err:
        where = atomic.full_disk_path(err)
        if where is None:
            raise
        _end_progress_bars()
        # a write outside core.atomic (a library's checkpoint, a copy of a folder): the file or output it was for
        log.error("%s: could not be written, no space left on its disk; free some and run again", where)
        sys.exit(1)
    finally:
        if distributed.is_main_process():
            git_view.repair()
        distributed.shut_down()
        # the stage is over: a SIGTERM from here on (dvc stopping, a second kill) ends the process as it is,
        # rather than raise SystemExit inside the interpreter's own shutdown ("Exception ignored in threading")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

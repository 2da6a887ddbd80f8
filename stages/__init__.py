"""Pipeline stages: each `python -m stages.<name>` reads params.yaml, does one thing, writes its outs.

Every stage does its work first and writes its outputs last, each in one atomic rename, and
dvc.yaml marks the outputs `persist` so DVC does not delete them before the stage runs: a stage
that fails, or is stopped, leaves the outputs of its last good run as they were.
"""
import logging
import signal
import sys
from typing import Callable

from core import distributed
from core.config import BackendError, ConfigError
from core.data import DataError
from core.training import TrainingDiverged


def _stop(signum, frame):
    # SIGTERM (a kill, a job scheduler, DVC's own shutdown) would end Python without running any
    # `finally`: as an exit instead, the temporaries of an unfinished write are removed.
    raise SystemExit(128 + signum)


def run(main: Callable[[], None]) -> None:
    """Run a stage; a problem with the user's input ends it with one clear line (a line per
    problem), not a traceback."""
    # In a data-parallel run only rank 0 reports progress; the others speak up only on trouble.
    level = logging.INFO if distributed.is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    try:
        main()
    except (ConfigError, DataError, BackendError, TrainingDiverged, FileNotFoundError) as err:
        for line in str(err).splitlines():
            logging.getLogger("stages").error("%s", line)
        sys.exit(1)
    finally:
        distributed.shut_down()

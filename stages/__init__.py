"""Pipeline stages: each `python -m stages.<name>` reads params.yaml, does one thing, writes its outs."""
import logging
import sys
from typing import Callable

from core import distributed
from core.config import ConfigError
from core.data import DataError
from core.backends import BackendError
from core.model import TrainingDiverged


def run(main: Callable[[], None]) -> None:
    """Run a stage; a problem with the user's input ends it with one clear line, not a traceback."""
    # In a data-parallel run only rank 0 reports progress; the others speak up only on trouble.
    level = logging.INFO if distributed.is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ConfigError, DataError, BackendError, TrainingDiverged, FileNotFoundError) as err:
        logging.getLogger("stages").error("%s", err)
        sys.exit(1)
    finally:
        distributed.shut_down()

"""Test-only: holds a DVC stage at its first write into the workspace, so that a test can stop it at work.

tests/test_faults.py starts `dvc` with this folder on PYTHONPATH; Python imports this module at the start of
every process, dvc's own included. Only in a stage's process (DVC puts DVC_STAGE into its environment), and
only in its main thread, the first rename whose target lies in the workspace (a staged output being swapped
in, or a file a library writes by renaming) waits up to HOLD_SECONDS before it happens. A stage quicker than
the test needs to find it is thereby still at work when its dvc is stopped, and one that went on after its
dvc ended would still be running when the test looks. The SIGTERM the runner sends itself once its dvc has
gone lands in this wait and raises there, so the rename never happens: the test checks that the stage's
outputs stay as they were.
"""

import os
import sys
import threading
import time

# longer than tests/test_faults.py waits for a stage to end: a stage that ignores its dvc's end outlives it
HOLD_SECONDS = 300.0


def _hold_first_rename_in_workspace():
    workspace = os.getcwd() + os.sep
    held = False

    def hook(event, args):
        nonlocal held
        if held or event != "os.rename" or threading.current_thread() is not threading.main_thread():
            return
        if os.path.abspath(os.fsdecode(args[1])).startswith(workspace):
            held = True
            print(f"hold_at_first_write: holding before {os.fsdecode(args[1])}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + HOLD_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.05)

    sys.addaudithook(hook)


if "DVC_STAGE" in os.environ:
    _hold_first_rename_in_workspace()

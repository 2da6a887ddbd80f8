"""Pipeline stages: each `python -m stages.<name>` reads params.yaml, does one thing, writes its outs,
through the runner in stages/runner.py (`run`).
"""

from stages.runner import dvc_process, run

__all__ = ["dvc_process", "run"]

"""Pipeline stages: each `python -m stages.<name>` does one thing. Its work is a function of its settings and
its paths, `<name>(params, paths, outputs)`; its `main` reads both (params.yaml, paths.yaml) and runs that
through the runner in stages/runner.py (`run`), which swaps the outputs in once every check has passed.
"""

from stages.runner import dvc_process, run

__all__ = ["dvc_process", "run"]

"""Running `dvc` (and the stages it starts) from the tests, with this interpreter's tools on PATH."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import tiny_raw_params


def tools_env(**extra: str) -> dict:
    """This environment with this interpreter's tools (dvc, the stages' python) first on PATH."""
    return {**os.environ, **extra, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_dvc(cwd: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = tools_env(**(env or {}))
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if check:
        assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def start_dvc(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`dvc <args>` started in the background, its standard error kept to read (a test waits for, or stops, it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=tools_env(**(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def use_tiny_model(workspace: Path, repo_params: dict, family: str, checkpoint: Path, **training) -> None:
    """params.yaml of `workspace` with `family` selected and pointed at a tiny local checkpoint."""
    raw = tiny_raw_params(repo_params, family, checkpoint, **training)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def edit_params(workspace: Path, edit: Callable[[dict], object]) -> None:
    """params.yaml of `workspace` read, changed in place by `edit`, and written back."""
    path = workspace / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def quick_answers(family: str) -> list[str]:
    """`dvc exp run` flags for quick answers: 8 greedy tokens after the echo, the length chosen among 0, 4 and 8
    (`++`: in the profile's own generation keys, which win over the shared ones, whether it has them or not)."""
    keys = {"max_new_tokens": 8, "num_beams": 1, "length_grid": "[0,4,8]", "answer_prefix": "echo"}
    return [flag for key, value in keys.items() for flag in ("-S", f"++models.{family}.generation.{key}={value}")]


def short_run(family: str) -> list[str]:
    """`dvc exp run` flags for a quick run: two optimiser steps of 4 rows (a profile's own batch, 8 x 2
    for llama32, tripled the step's time on the real vocabulary), quick answers."""
    steps = {"batch_size": 4, "grad_accum": 1}
    flags = [flag for key, value in steps.items() for flag in ("-S", f"++models.{family}.training.{key}={value}")]
    return ["-S", "training.max_steps=2", *flags, *quick_answers(family)]

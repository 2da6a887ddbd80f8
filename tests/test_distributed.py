"""The finetune stage data-parallel under torchrun: 2 CPU processes, gloo, a tiny model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dvc_helpers import use_tiny_model

pytestmark = pytest.mark.slow


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def prepared_workspace(workspace: Path, repo_params: dict, checkpoint: Path, **training) -> None:
    use_tiny_model(workspace, repo_params, "llama32", checkpoint, **training)
    done = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=workspace, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_two_processes_train_one_model_and_only_rank0_writes(workspace, repo_params, toy_checkpoints, tmp_path):
    prepared_workspace(workspace, repo_params, toy_checkpoints["llama32"], max_steps=3, batch_size=2, grad_accum=2)
    runs = tmp_path / "runs"
    for r in (0, 1):
        shutil.copytree(workspace, runs / f"rank{r}", ignore=shutil.ignore_patterns(".git"))

    done = torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(runs), cwd=workspace)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # DDP averaged the gradients: both ranks hold the same LoRA weights after training.
    digests = [(runs / f"lora-rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]

    # Rank 0 wrote the adapter, the metrics and the DVCLive log; rank 1 wrote none of them
    # (every rank saves its own RNG state into the resumable checkpoints, which is as it should be).
    main, other = runs / "rank0", runs / "rank1"
    assert (main / "models/adapter/adapter_model.safetensors").stat().st_size > 0
    assert (main / "dvclive/finetune/metrics.json").exists()
    assert not list((main / "models/checkpoints").glob("*")), "finished run's checkpoints left behind"
    for output in ("models/adapter", "metrics/finetune.json", "dvclive"):
        assert not (other / output).exists(), output
    metrics = json.loads((main / "metrics/finetune.json").read_text())
    # grad_accum 2 over 2 processes: 1 micro-batch of 2 each, the one-process effective batch of 4
    assert (metrics["processes"], metrics["effective_batch_size"], metrics["steps"]) == (2, 4, 3)
    assert metrics["backend"] == "hf" and metrics["resumed_from_step"] == 0


def test_grad_accum_that_cannot_be_split_is_refused(workspace, repo_params, toy_checkpoints):
    prepared_workspace(workspace, repo_params, toy_checkpoints["llama32"], max_steps=1, batch_size=2, grad_accum=3)
    done = torchrun("-m", "stages.finetune", cwd=workspace)
    assert done.returncode != 0
    assert "training.grad_accum=3 cannot be split over 2 processes" in done.stderr
    assert not (workspace / "models/adapter").exists()

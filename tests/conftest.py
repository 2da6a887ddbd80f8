import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.config import parse_params
from tests.checkpoints import REPO, build_checkpoint


def pytest_collection_modifyitems(config, items):
    import torch

    # The longest files first, then the other slow ones (whole pipelines under DVC), then the quick
    # tests: the two worker processes (pytest.ini) start on the long ones and the rest fill in
    # around them, rather than the longest file starting last.
    longest = ["test_pipeline.py", "test_experiments.py", "test_notebook.py"]
    items.sort(key=lambda item: (longest.index(item.path.name) if item.path.name in longest else len(longest) + ("slow" not in item.keywords)))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: build_checkpoint(family, root / family) for family in ("qwen3", "llama32")}


def tiny_params(raw: dict, family: str, checkpoint: Path, **training):
    """The repo's params with `family`'s profile pointed at a local tiny checkpoint."""
    return parse_params(tiny_raw_params(raw, family, checkpoint, **training))


def tiny_raw_params(raw: dict, family: str, checkpoint: Path, **training) -> dict:
    """tiny_params as the params.yaml dict."""
    raw = copy.deepcopy(raw)
    raw["model"] = family
    profile = raw["models"][family]
    profile.update(name=str(checkpoint), load_in_4bit=False, backend="hf", max_seq_length=1024)
    profile["lora"]["r"] = 8
    profile["training"] = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "gradient_checkpointing": False, **training}
    profile["generation"] = {"max_new_tokens": 12, "batch_size": 4}
    return raw


def make_workspace(dest: Path) -> Path:
    """A git+DVC repository at `dest` holding the repo's files, without any run outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(("data/prepared", "models/", "submissions/", "metrics/", "plots/", "dvclive/", "dvc.lock")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A git+DVC copy of the repo's tracked files, to run stages and `dvc` in."""
    return make_workspace(tmp_path / "repo")


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (tests/sshd.py); required in CI, skipped elsewhere without sshd."""
    from tests.sshd import start_sshd

    try:
        process, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    except FileNotFoundError as err:
        if os.environ.get("CI"):
            pytest.fail(str(err))
        pytest.skip(str(err))
    yield server
    process.terminate()
    process.wait(timeout=10)

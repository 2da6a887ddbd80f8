import copy
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

# Each xdist worker gets its share of the cores for torch, in its own process and in every process it starts
# (dvc, the stages): two workers whose torch each used every core made a tiny `dvc repro` take 80-100 s beside
# the other instead of 40 s (threads spinning for cores the other worker held). Set before torch is imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

from core.config import parse_params  # noqa: E402 (after the thread count: torch reads it when imported)
from tests.checkpoints import REPO, build_checkpoint, build_toy_checkpoint  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    # The longest files first, then the other slow ones (whole pipelines under DVC), then the quick
    # tests, and last the notebook: the two worker processes (pytest.ini) start on the long ones and
    # the rest fill in around them, rather than the longest file starting last; the notebook needs the
    # experiments that test_experiments.py's worker builds, and taken third it held the other worker
    # idle for two minutes waiting for them.
    longest = ["test_pipeline.py", "test_experiments.py", "test_faults.py"]

    def order(item) -> int:
        if item.path.name in longest:
            return longest.index(item.path.name)
        if item.path.name == "test_notebook.py":
            return len(longest) + 2
        return len(longest) + ("slow" not in item.keywords)

    items.sort(key=order)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def shared_dir(tmp_path_factory) -> Path:
    """A folder every worker process of this test run sees (xdist gives each worker a temp folder of its own)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    root = tmp_path_factory.getbasetemp().parent / f"shared-{run}" if run else tmp_path_factory.getbasetemp() / "shared"
    root.mkdir(exist_ok=True)
    return root


def build_once(path: Path, build: Callable[[Path], object]) -> Path:
    """`path`, built by `build` in the first worker process that asks; the others wait for it and reuse it."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = Path(f"{path}.built")
        if not built.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            built.touch()
    return path


def copy_repo(source: Path, dest: Path) -> Path:
    """A copy of a git+DVC repository (work tree, .git, DVC cache) to change without touching `source`."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny Qwen3 and Llama stand-ins (the real tokenizers, two small layers), one set for the whole run: a
    shared pipeline's params name their paths."""
    families = ("qwen3", "llama32")
    root = build_once(
        shared_dir(tmp_path_factory) / "checkpoints",
        lambda root: [build_checkpoint(family, root / family) for family in families],
    )
    return {family: root / family for family in families}


@pytest.fixture(scope="session")
def toy_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny Qwen3 and Llama with the toy tokenizer (tests/checkpoints.py), for the tests of training mechanics
    that run many optimiser steps."""
    families = ("qwen3", "llama32")
    root = build_once(
        shared_dir(tmp_path_factory) / "toy-checkpoints",
        lambda root: [build_toy_checkpoint(family, root / family) for family in families],
    )
    return {family: root / family for family in families}


def tiny_params(raw: dict, family: str, checkpoint: Path, **training):
    """The repo's params with `family`'s profile pointed at a local tiny checkpoint."""
    return parse_params(tiny_raw_params(raw, family, checkpoint, **training))


def tiny_raw_params(raw: dict, family: str, checkpoint: Path, **training) -> dict:
    """tiny_params as the params.yaml dict."""
    raw = copy.deepcopy(raw)
    raw["model"] = family
    profile = raw["models"][family]
    profile["base"].update(name=str(checkpoint), load_in_4bit=False, backend="hf", max_seq_length=1024)
    profile["lora"]["r"] = 8
    profile["training"] = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "gradient_checkpointing": False, **training}
    profile["generation"] = {"max_new_tokens": 12, "batch_size": 4}
    return raw


def make_workspace(dest: Path) -> Path:
    """A git+DVC repository at `dest` holding the repo's files, without any run outputs."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(
            ("data/prepared", "models/", "submissions/", "metrics/", "plots/", "dvclive/", "dvc.lock")
        ):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A git+DVC copy of the repo's tracked files, to run stages and `dvc` in."""
    return make_workspace(tmp_path / "repo")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, repo_params, toy_checkpoints) -> Path:
    """The whole pipeline run once by `dvc repro` on the tiny Qwen3 with the toy tokenizer (two optimiser
    steps), committed: the starting point of the tests that change, break or share a finished run (they test
    DVC's and the stages' mechanics; the real tokenizers run end to end in `tiny_experiments`). Never changed:
    copy it."""
    from tests.dvc_helpers import edit_params, git, run_dvc, use_tiny_model

    def build(repo: Path) -> None:
        make_workspace(repo)
        use_tiny_model(repo, repo_params, "qwen3", toy_checkpoints["qwen3"], max_steps=2)
        # 13 validation rows instead of the sample's 31: every test that reruns predict, evaluate or
        # deploy here (and the experiments on the real vocabularies, where scoring a row's every token
        # is most of what evaluation, DPO and predict cost) pays for each row
        edit_params(repo, lambda raw: raw["data"].update(val_fraction=0.2))
        run_dvc(repo, "repro")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "a good run")

    return build_once(shared_dir(tmp_path_factory) / "tiny-pipeline", build)


@pytest.fixture(scope="session")
def tiny_experiments(tmp_path_factory, tiny_pipeline, tiny_checkpoints) -> Path:
    """`tiny_pipeline` and two `dvc exp run`s on it, each profile on its tiny stand-in (the real tokenizer,
    benchmarks/standins.py) through every stage: tiny-qwen3 (SFT, then DPO: 2 steps, 2 pairs) and tiny-llama32
    (answering through the export), the work tree holding the last. Never changed: copy it."""
    from tests.dvc_helpers import run_dvc, short_run

    def build(repo: Path) -> None:
        copy_repo(tiny_pipeline, repo)
        run_dvc(
            repo,
            "exp",
            "run",
            "-n",
            "tiny-qwen3",
            "-S",
            f"models.qwen3.base.name={tiny_checkpoints['qwen3']}",
            *short_run("qwen3"),
            "-S",
            "align.method=dpo",
            "-S",
            "align.max_steps=2",
            "-S",
            "align.batch_size=1",
            "-S",
            "align.grad_accum=1",
            "-S",
            "align.max_pairs=2",  # each validation pair costs ~5 s on the real vocabulary
        )
        run_dvc(
            repo,
            "exp",
            "run",
            "-n",
            "tiny-llama32",
            "-S",
            "model=llama32",
            "-S",
            f"models.llama32.base.name={tiny_checkpoints['llama32']}",
            *short_run("llama32"),
            "-S",
            "models.llama32.generation.engine=onnx",
            "-S",
            "align.method=none",
        )

    return build_once(shared_dir(tmp_path_factory) / "tiny-experiments", build)


@pytest.fixture
def finished_workspace(tiny_pipeline, tmp_path) -> Path:
    """A copy of `tiny_pipeline` of this test's own."""
    return copy_repo(tiny_pipeline, tmp_path / "repo")


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

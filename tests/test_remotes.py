"""Data, adapters, predictions and submissions travel through DVC remotes: the shipped default
(a local directory outside the work tree) and a real ssh:// remote on a throw-away sshd."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repo
from tests.dvc_helpers import git, run_dvc

pytestmark = pytest.mark.slow
OUTPUTS = [
    "data/raw/train.csv",
    "data/raw/test.csv",
    "data/prepared/train.jsonl",
    "data/prepared/test.jsonl",
    "models/adapter/adapter_model.safetensors",
    "models/adapter/profile.json",
    "data/predictions/test.csv",
    "submissions/submission.csv",
    "models/merged/model.safetensors",
    "models/export/edge.json",
    "models/export/model.onnx.data",
]


def snapshot(tree: Path) -> dict[str, str]:
    """Every file of the work tree and its DVC cache, by content (DVC's scratch space left out)."""
    return {
        str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tree.rglob("*"))
        if p.is_file() and not p.relative_to(tree).parts[0] == ".git" and ".dvc/tmp" not in str(p.relative_to(tree))
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_pipeline):
    """A repository with the whole pipeline run on a tiny model, raw data added with `dvc add`,
    everything committed; its default remote is <root>/kenya-clinical-dvc-store."""
    root = tmp_path_factory.mktemp("remotes")
    repo = copy_repo(tiny_pipeline, root / "repo")
    (repo / "data/raw").mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        shutil.copy(repo / "data/sample" / name, repo / "data/raw" / name)
    run_dvc(repo, "add", "data/raw/train.csv", "data/raw/test.csv")
    params = (repo / "params.yaml").read_text().replace("data/sample/train.csv", "data/raw/train.csv")
    (repo / "params.yaml").write_text(params.replace("data/sample/test.csv", "data/raw/test.csv"))
    run_dvc(repo, "repro")  # prepare, on the same rows from their new place: nothing after it changes
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the raw data under DVC")
    return root, repo


def assert_same_outputs_without_rerun(clone: Path, repo: Path) -> None:
    assert "Data and pipelines are up to date" in run_dvc(clone, "status").stdout
    for name in OUTPUTS:
        assert (clone / name).read_bytes() == (repo / name).read_bytes(), name
    assert "Running stage" not in run_dvc(clone, "repro").stdout  # nothing is retrained


def test_default_remote_is_a_local_directory_outside_the_work_tree(finished):
    root, repo = finished
    run_dvc(repo, "push")
    store = root / "kenya-clinical-dvc-store"
    assert store.is_dir() and any(store.rglob("*")) and not store.is_relative_to(repo)
    clone = root / "clone-default"
    git(root, "clone", "-q", str(repo), str(clone))
    run_dvc(clone, "pull")
    assert_same_outputs_without_rerun(clone, repo)


def test_ssh_remote_round_trip_and_experiments_travel(finished, ssh_server, tmp_path):
    root, repo = finished
    origin = tmp_path / "origin.git"  # the team's git server
    git(tmp_path, "init", "-q", "--bare", str(origin))
    run_dvc(repo, "push")
    work = root / "work-ssh"  # beside the repo, so the default store is the same directory
    git(root, "clone", "-q", str(repo), str(work))
    run_dvc(work, "pull")  # from the default store, as a team member would start
    run_dvc(work, "remote", "add", "-d", "ssh", ssh_server.url(tmp_path / "ssh-store"))
    run_dvc(
        work, "remote", "modify", "--local", "ssh", "keyfile", str(ssh_server.keyfile)
    )  # credentials stay out of git
    assert str(ssh_server.keyfile) not in (work / ".dvc/config").read_text()
    git(work, "commit", "-qam", "ssh remote")
    git(work, "remote", "set-url", "origin", str(origin))
    git(work, "push", "-q", "origin", "HEAD:main")
    run_dvc(work, "push")
    run_dvc(work, "exp", "run", "-n", "six-tokens", "-S", "models.qwen3.generation.max_new_tokens=6")  # predict onwards
    run_dvc(work, "exp", "push", "origin", "six-tokens")
    experiment_answers = (work / "data/predictions/test.csv").read_bytes()
    assert experiment_answers != (repo / "data/predictions/test.csv").read_bytes()

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(clone))
    run_dvc(clone, "remote", "modify", "--local", "ssh", "keyfile", str(ssh_server.keyfile))
    run_dvc(clone, "pull")
    assert_same_outputs_without_rerun(clone, repo)

    run_dvc(clone, "exp", "pull", "origin", "six-tokens")
    run_dvc(clone, "exp", "apply", "six-tokens")
    run_dvc(clone, "checkout")
    assert (clone / "data/predictions/test.csv").read_bytes() == experiment_answers
    assert "Data and pipelines are up to date" in run_dvc(clone, "status").stdout


@pytest.mark.faults
def test_push_to_an_unreachable_remote_fails_clearly_and_changes_nothing(finished, tmp_path):
    root, repo = finished
    run_dvc(repo, "remote", "add", "--local", "gone", "ssh://nobody@127.0.0.1:9/store")  # port 9: nothing listens
    before = snapshot(repo)
    done = run_dvc(repo, "push", "-r", "gone", check=False)
    assert done.returncode != 0
    assert "ERROR:" in done.stderr and "Connect call failed ('127.0.0.1', 9)" in done.stderr, done.stderr
    assert snapshot(repo) == before


@pytest.mark.faults
def test_pull_of_missing_objects_fails_clearly_and_changes_nothing(finished, tmp_path):
    root, repo = finished
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    (tmp_path / "empty-store").mkdir()
    run_dvc(clone, "remote", "add", "--local", "empty", str(tmp_path / "empty-store"))
    before = snapshot(clone)
    done = run_dvc(clone, "pull", "-r", "empty", check=False)
    assert done.returncode != 0
    assert "missing" in done.stderr.lower(), done.stderr
    assert snapshot(clone) == before


@pytest.mark.faults
def test_a_damaged_object_in_the_default_remote_is_never_checked_out_and_repro_rebuilds_it(finished, tmp_path):
    """8 bytes of the adapter overwritten inside the remote, its size unchanged: with the project's
    `verify = true` the pull fails naming the output, nothing damaged reaches the cache or the work tree,
    and `dvc repro` makes the recorded bytes again."""
    root, repo = finished
    run_dvc(repo, "push")
    store = tmp_path / "kenya-clinical-dvc-store"  # where the clone's default remote points (../../ from its .dvc)
    shutil.copytree(root / "kenya-clinical-dvc-store", store)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    listing = next(o["md5"] for o in lock["stages"]["finetune"]["outs"] if o["path"] == "models/adapter")
    entries = json.loads((store / "files/md5" / listing[:2] / listing[2:]).read_text())
    weights = next(e["md5"] for e in entries if e["relpath"] == "adapter_model.safetensors")
    damaged = store / "files/md5" / weights[:2] / weights[2:]
    with open(damaged, "r+b") as f:
        f.seek(damaged.stat().st_size // 2)
        f.write(b"\x00\xff" * 4)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    done = run_dvc(clone, "pull", check=False)
    assert done.returncode != 0 and "models/adapter" in done.stderr, done.stderr
    good = (repo / "models/adapter/adapter_model.safetensors").read_bytes()
    for out in ("models/adapter", "models/aligned"):
        pulled = clone / out / "adapter_model.safetensors"
        assert not pulled.exists() or pulled.read_bytes() == good, out
    cached = clone / ".dvc/cache/files/md5" / weights[:2] / weights[2:]
    assert not cached.exists() or cached.read_bytes() == good
    # the way back: the stages make the same bytes again
    run_dvc(clone, "repro")
    assert (clone / "models/adapter/adapter_model.safetensors").read_bytes() == good
    assert (clone / "models/aligned/adapter_model.safetensors").read_bytes() == good
    assert "Data and pipelines are up to date" in run_dvc(clone, "status").stdout

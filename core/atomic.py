"""Atomic file and directory writes: a reader sees the old artefact or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import ArtifactError, DiskFullError


def check_safetensors(path: str | Path, fix: str) -> None:
    """An ArtifactError naming `path` and `fix` unless it is a whole safetensors file, as the
    safetensors library validates it on opening (its header reads, and its tensors cover the
    file's bytes exactly); no tensor is read, so it takes a moment whatever the file's size."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; {fix}") from None
    except (SafetensorError, OSError) as err:
        reason = str(err).removeprefix("Error while deserializing header: ")
        if "incomplete metadata" in reason:  # a header that reads, and bytes it does not account for
            raise ArtifactError(f"{path}: damaged ({path.stat().st_size} bytes: {reason}); {fix}") from None
        raise ArtifactError(f"{path}: not a readable safetensors file ({reason}); {fix}") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    Works for files and directories. On an exception the temporary is removed and
    whatever stood at `path` before is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name  # the caller writes a file or makes a directory here
    try:
        try:
            yield target
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"{path}: could not be written, no space left on its disk ({path.parent.resolve()}); "
                    f"free some and run again: the {path} there before is unchanged"
                ) from None
            raise
        if not target.exists():
            raise ArtifactError(f"nothing was written for {path}")
        if target.is_dir() and path.is_dir():
            # a directory cannot be renamed over a non-empty one: move the old aside first
            old = tmp / ".old"
            os.replace(path, old)
            os.replace(target, path)
        else:
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    write_text(path, jsonl_text(records))


def write_files(directory: str | Path, files: dict[str, str]) -> None:
    """Replace `directory` with one holding exactly `files` (name -> text), in one step: no
    reader sees some files new and others old, and no file of an earlier version lingers."""
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str | Path) -> object:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fingerprint(*objects: object) -> str:
    """A short stable hash of JSON-able objects (names a run's checkpoint directory)."""
    import hashlib

    blob = json.dumps(objects, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

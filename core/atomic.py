"""Atomic file and directory writes: a reader sees the old artefact or the new one, never half of one;
and a stage's outputs swapped in together (`Outputs`): all of them new, or all as they were."""

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


STAGED = ".staged"  # the suffix of the directory an output is written in before `Outputs.commit`


def shown(path: Path) -> Path:
    """The path a person knows: anything inside an output being staged (`dir/.name.xyz.staged/...`) is
    that output, `dir/name`."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.startswith(".") and part.endswith(STAGED):
            return Path(*parts[:i], part[1:].rsplit(".", 2)[0])
    return Path(path)


def full_disk_path(err: OSError) -> Path | None:
    """The output a write that found its disk full was for (as a person knows it), or None if `err` is
    something else. shutil.copytree gathers its files' errors into one shutil.Error, without an errno."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return shown(Path(err.filename)) if err.filename else Path("a file")
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list):
        for _source, target, why in err.args[0]:
            if "[Errno 28]" in why or "[Errno 122]" in why:
                return shown(Path(target))
    return None


@contextlib.contextmanager
def naming_a_full_disk(path: Path) -> Iterator[None]:
    """A full disk met while writing `path` (an output written in pieces, by a library) as one error naming it."""
    try:
        yield
    except OSError as err:
        if full_disk_path(err) is not None:
            path = shown(path)
            raise DiskFullError(
                f"{path}: could not be written, no space left on its disk ({path.parent.resolve()}); "
                f"free some and run again: the {path} there before is unchanged"
            ) from None
        raise


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
        with naming_a_full_disk(path):
            yield target
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


class Outputs:
    """A stage's outputs, changed together or not at all.

    The stage writes each output at `path(target)`, a staging path beside the target (on its disk, so
    that a full disk fails here, before anything is replaced). `commit` then renames every staged
    output over its target; if a rename fails, the targets already replaced are put back as they
    were. Outputs never committed (the stage failed, or a check after its work refused) are removed
    on leaving the `with` block, and every target stays as it was."""

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # target -> its staging directory

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def path(self, target: str | Path) -> Path:
        """Where to write `target` (a file or a directory) until `commit`."""
        target = Path(target)
        assert target not in self._staged, f"{target}: staged twice"  # a stage's own bug
        target.parent.mkdir(parents=True, exist_ok=True)
        self._staged[target] = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=STAGED, dir=target.parent))
        return self._staged[target] / target.name

    def write_text(self, target: str | Path, text: str) -> None:
        with naming_a_full_disk(Path(target)):
            self.path(target).write_text(text, encoding="utf-8")

    def write_json(self, target: str | Path, obj: object) -> None:
        self.write_text(target, json_text(obj))

    def write_files(self, directory: str | Path, files: dict[str, str]) -> None:
        """`directory` holding exactly `files` (name -> text): no file of an earlier version lingers."""
        staged = self.path(directory)
        with naming_a_full_disk(Path(directory)):
            staged.mkdir()
            for name, text in files.items():
                (staged / name).write_text(text, encoding="utf-8")

    def commit(self) -> None:
        """Every staged output over its target, together: on a failure, those already moved are put back."""
        missing = [str(target) for target, tmp in self._staged.items() if not (tmp / target.name).exists()]
        if missing:
            raise ArtifactError(f"nothing was written for {', '.join(missing)}")
        replaced: list[tuple[Path, Path | None]] = []  # target, where its old version waits
        try:
            for target, tmp in self._staged.items():
                old = tmp / ".old" if target.exists() or target.is_symlink() else None
                if old is not None:
                    os.replace(target, old)
                replaced.append((target, old))
                os.replace(tmp / target.name, target)
        except BaseException:
            for target, old in reversed(replaced):
                _remove(target)
                if old is not None:
                    os.replace(old, target)
            raise
        finally:
            self.discard()

    def discard(self) -> None:
        for tmp in self._staged.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self._staged.clear()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def readable_by_all(directory: Path) -> None:
    """Every file in `directory` with the mode a plain write gives it (0644 under the usual umask), whatever
    the library that wrote it chose."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def json_text(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json_text(obj))


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

"""What dvc.lock records for an output directory, which of its files no longer match, and the command
that puts a damaged output back from good sources (`how_to_restore`).

A stage that finds an earlier stage's output inconsistent (the export made from another adapter
than the one in models/aligned) cannot tell by itself whether the pipeline moved on (rebuild the
later output) or the earlier output's bytes were changed behind DVC's back (restore it). dvc.lock
knows: it records each output directory's manifest (`md5: <hash>.dir`), which DVC keeps in its
cache as a JSON list of each file's relative path and md5. Read with PyYAML and hashlib only, so
this works wherever the stages run, without DVC's API.
"""

from __future__ import annotations

import configparser
import hashlib
import json
from pathlib import Path

import yaml


def _cache_dir(root: Path) -> Path:
    """DVC's cache: `cache.dir` of .dvc/config.local or .dvc/config (relative to .dvc/), else .dvc/cache."""
    for name in ("config.local", "config"):
        config = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            config.read(root / ".dvc" / name, encoding="utf-8")
        except configparser.Error:
            continue
        if config.has_option("cache", "dir"):
            return root / ".dvc" / config.get("cache", "dir")
    return root / ".dvc" / "cache"


def _recorded(output: str, root: Path) -> tuple[str, str] | None:
    """(the stage that makes `output`, its md5) as dvc.lock records them, or None where unknown."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    for name, stage in (lock.get("stages") or {}).items():
        for out in stage.get("outs") or []:
            if Path(out.get("path", "")) == Path(output):
                return name, str(out.get("md5", ""))
    return None


def _cached(root: Path, digest: str) -> Path:
    return _cache_dir(root) / "files" / "md5" / digest[:2] / digest[2:]


def _recorded_manifest(output: str, root: Path) -> dict[str, str] | None:
    """{relative path: md5} of `output` as dvc.lock records it, or None where unknown."""
    found = _recorded(output, root)
    if found is None or not found[1].endswith(".dir"):
        return None
    try:
        entries = json.loads(_cached(root, found[1]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {entry["relpath"]: entry["md5"] for entry in entries}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_unlike_record(output: str | Path, root: str | Path = ".") -> list[str] | None:
    """The files of directory `output` (relative to `root`) whose bytes differ from what dvc.lock
    records, missing ones included: [] where all match, None where dvc.lock or DVC's cache does
    not say (no record, the manifest not cached)."""
    root, output = Path(root), Path(output)
    if output.is_absolute():  # dvc.lock's paths are the repository's
        try:
            output = output.relative_to(root.resolve())
        except ValueError:
            return None
    recorded = _recorded_manifest(str(output), root)
    if recorded is None:
        return None
    directory = root / output
    return sorted(
        str(output / name)
        for name, md5 in recorded.items()
        if not (directory / name).is_file() or _md5(directory / name) != md5
    )


def how_to_restore(output: str | Path, root: str | Path = ".") -> str:
    """The way back for a damaged `output` that DVC tracks, from good sources: `dvc checkout --force` where
    DVC's cache holds intact copies of the recorded files that differ; else rerunning the stage that makes
    it, alone, since a checkout would put back the same bytes (dvc.lock records the damaged ones, after a
    `dvc commit`, or the cached copy is itself damaged). `--force`: DVC otherwise refuses to replace a file
    that differs from its record."""
    root, output = Path(root), Path(output)
    if output.is_absolute() and output.is_relative_to(root.resolve()):  # dvc.lock's paths are the repository's
        output = output.relative_to(root.resolve())
    recorded = _recorded(str(output), root)
    manifest = _recorded_manifest(str(output), root)
    if recorded is None or manifest is None:  # not a DVC output here (or its record is not cached)
        return f"restore it with: dvc checkout --force {output} (or rebuild it: dvc repro)"
    differing = files_unlike_record(output, root) or []

    def intact_in_cache(name: str) -> bool:
        digest = manifest[Path(name).relative_to(output).as_posix()]
        copy = _cached(root, digest)
        return copy.is_file() and _md5(copy) == digest

    if differing and all(map(intact_in_cache, differing)):
        return f"restore it with: dvc checkout --force {output}"
    return (
        f"rebuild it from its inputs: dvc repro --force --single-item {recorded[0]} "
        f"(DVC's copy of {output} holds the same damaged bytes, so a checkout would not help)"
    )

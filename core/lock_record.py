"""What dvc.lock records for an output directory, and which of its files no longer match.

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


def _recorded_manifest(output: str, root: Path) -> dict[str, str] | None:
    """{relative path: md5} of `output` as dvc.lock records it, or None where unknown."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            digest = str(out.get("md5", ""))
            if Path(out.get("path", "")) == Path(output) and digest.endswith(".dir"):
                manifest = _cache_dir(root) / "files" / "md5" / digest[:2] / digest[2:]
                try:
                    entries = json.loads(manifest.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return None
                return {entry["relpath"]: entry["md5"] for entry in entries}
    return None


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

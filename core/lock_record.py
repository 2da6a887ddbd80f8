"""What dvc.lock records for an output directory, which of its files no longer match, and the command that
puts a damaged output back from good sources (`how_to_restore`).

A stage that finds an earlier stage's output inconsistent (the export made from another adapter than the
one in models/aligned) cannot tell by itself whether the pipeline moved on (rebuild the later output) or
the earlier output's bytes were changed behind DVC's back (restore it). DVC knows: its API
(`dvc.repo.Repo`) gives the stage that makes the output, the recorded manifest of its files (from DVC's
cache) and where each file's cached copy lies. DVC is imported only here, on the way to an error message
(about a second); where it is not installed (a device with the export alone) nothing is said.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """An output directory against dvc.lock's record of it."""

    stage: str  # the stage that makes it
    differing: list[str]  # its files whose bytes differ from the record (missing ones too), as paths
    cached_intact: bool  # DVC's cache holds intact copies of every recorded file that differs


def _md5(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _relative(output: Path, root: Path) -> Path:
    """dvc.lock's paths are the repository's."""
    if output.is_absolute() and output.is_relative_to(root.resolve()):
        return output.relative_to(root.resolve())
    return output


def record(output: str | Path, root: str | Path = ".") -> Record | None:
    """`output` (a directory DVC tracks, relative to `root`) against its record, or None where DVC cannot
    say (not installed, not a DVC project, no such output, its manifest not cached)."""
    root = Path(root)
    output = _relative(Path(output), root)
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            out = next((o for s in repo.index.stages for o in s.outs if Path(o.def_path) == output), None)
            if out is None or not out.use_cache or not out.hash_info or not out.hash_info.isdir:
                return None
            recorded = {"/".join(key): info.value for key, _, info in out.get_obj()}
            directory = root / output

            def unlike(name: str, md5: str) -> bool:
                return not (directory / name).is_file() or _md5(directory / name) != md5

            def cached(name: str) -> bool:
                copy = Path(out.cache.oid_to_path(recorded[name]))
                return copy.is_file() and _md5(copy) == recorded[name]

            differing = sorted(name for name, md5 in recorded.items() if unlike(name, md5))
            intact = all(map(cached, differing))
            return Record(out.stage.name, [str(output / name) for name in differing], intact)
    except Exception:  # noqa: BLE001 - no DVC, no project, no cached manifest: DVC cannot say, so neither can we
        return None


def files_unlike_record(output: str | Path, root: str | Path = ".") -> list[str] | None:
    """The files of directory `output` (relative to `root`) whose bytes differ from what dvc.lock
    records, missing ones included: [] where all match, None where DVC cannot say."""
    found = record(output, root)
    return None if found is None else found.differing


def how_to_restore(output: str | Path, root: str | Path = ".") -> str:
    """The way back for a damaged `output` that DVC tracks, from good sources: `dvc checkout --force` where
    DVC's cache holds intact copies of the recorded files that differ; else rerunning the stage that makes
    it, alone, since a checkout would put back the same bytes (dvc.lock records the damaged ones, after a
    `dvc commit`, or the cached copy is itself damaged). `--force`: DVC otherwise refuses to replace a file
    that differs from its record."""
    output = _relative(Path(output), Path(root))
    found = record(output, root)
    if found is None:
        return f"restore it with: dvc checkout --force {output} (or rebuild it: dvc repro)"
    if found.differing and found.cached_intact:
        return f"restore it with: dvc checkout --force {output}"
    return (
        f"rebuild it from its inputs: dvc repro --force --single-item {found.stage} "
        f"(DVC's copy of {output} holds the same damaged bytes, so a checkout would not help)"
    )

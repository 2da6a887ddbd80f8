"""Git's view of the files a run rewrites stays true.

A `dvc exp run` that DVC refuses because another run holds the repository still stashes the work tree,
resets it and puts it back (dvc/repo/experiments/queue/base.py, `_stash_exp`), while the first run is
going. Putting back the index can record the file's current timestamps beside the blob of the committed
version: git then trusts the timestamps, and `git status` and `git add -A` no longer see that dvc.lock
changed, so a `git commit` would record a stale lock. Each stage, as it ends, compares the files a run
rewrites with git's index by content; where git's record is stale it touches the file (git then looks
at its content again) and says so in one line. Outside a git repository nothing is done.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("stages")

WATCHED = ("dvc.lock", "params.yaml")


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None


def _blob_id(path: Path) -> str:
    """The id git gives a file's content (`git hash-object`)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def stale_entries(names: tuple[str, ...] = WATCHED) -> list[str]:
    """The files among `names` whose content differs from git's index entry while git, trusting the
    entry's timestamps, reports them unchanged."""
    listed = _git("ls-files", "--stage", "--", *names)
    if listed is None or listed.returncode != 0:
        return []
    stale = []
    for line in listed.stdout.splitlines():
        meta, name = line.split("\t", 1)
        path = Path(name)
        if path.is_file() and _blob_id(path) != meta.split()[1]:
            seen = _git("diff", "--quiet", "--", name)
            if seen is not None and seen.returncode == 0:
                stale.append(name)
    return stale


def repair() -> list[str]:
    """Make git look again at every file it holds a stale record of; one line each. Returns them."""
    stale = stale_entries()
    for name in stale:
        os.utime(name)
        log.warning(
            "%s: git's index held an older version under this file's timestamps (a refused `dvc exp run` puts "
            "the work tree back that way); touched it, so that git status and git add see the change",
            name,
        )
    return stale

"""The errors a user can act on: each names what is wrong (a file and row, a params key, a path)
and how to put it right, and a stage reports it as one line per problem, never a traceback.

Every error the project raises about something outside its own code (params.yaml, a data file,
the machine, a base checkpoint, a file an earlier stage wrote) derives from UserError, and
`stages.run` catches that class. Anything else that escapes a stage is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message (one line per problem) says which and how."""


class CheckpointError(UserError):
    """A profile's base weights cannot be loaded: not on this machine and the hub out of reach, or a
    tokenizer that lacks a token the family's template needs."""


class ArtifactError(UserError, FileNotFoundError):
    """A file an earlier stage writes is missing or damaged; `dvc checkout` or `dvc repro` restores it."""


class DiskFullError(UserError, OSError):
    """An output could not be written for want of space; what stood there before is unchanged."""

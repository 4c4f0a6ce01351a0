"""Exception types perfd raises on purpose.

Every ``PerfdError`` carries a one-line, actionable message; the CLI prints it
and exits with ``exit_code`` (2 = bad usage or bad target, SPEC §3).
"""

from __future__ import annotations


class PerfdError(Exception):
    """Base of every error perfd raises deliberately."""

    exit_code = 1


class UsageError(PerfdError):
    """The command line or configuration is wrong."""

    exit_code = 2


class TargetError(PerfdError):
    """The target cannot be attached to (missing, not CPython, unsupported, denied)."""

    exit_code = 2


class NoSuchProcess(TargetError):
    pass


class NotPython(TargetError):
    pass


class UnsupportedPython(TargetError):
    pass


class PermissionDenied(TargetError):
    pass


class BindError(UsageError):
    """The server's address cannot be bound (in use, not permitted)."""


class NotAttached(PerfdError):
    """No live target: served as 503 with ``detail``."""


class MemoryReadError(PerfdError):
    """A read of target memory failed (unmapped, freed, target gone).

    Samplers count these; they never escape to the user.
    """

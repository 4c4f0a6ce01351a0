"""Logging a failure that can repeat a thousand times a second.

perfd's loops (the sampler, the call tracker, the probes' event readers)
keep running through any failure and count it; the log gets its stack trace
the first time and then every ``EVERY``-th, so a bug shows once with its
cause and never floods the journal.
"""

from __future__ import annotations

import logging

EVERY = 10_000


def log_failure(log: logging.Logger, count: int, what: str) -> None:
    """Call from an ``except`` block with the failure's running ``count`` (1 first)."""
    if count == 1 or count % EVERY == 0:
        log.exception("%s (%d so far; the rest only counted)", what, count)

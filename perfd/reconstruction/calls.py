"""Node calls from a stream of samples.

A call is one node-entry coroutine instance. It is born the first time a
sample shows it (on a thread stack or in a task's await chain), followed
while it stays visible, and ended once it has been missing from
``miss_limit`` consecutive *complete* samples — one miss is tolerated because
a torn read can shorten a chain. Start and end are placed halfway between
the sample that first (last) saw the call and the one before (after) it,
which halves the sampling error on both ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CallObservation:
    """One node-entry coroutine seen in one sample."""

    key: tuple[int, int]  # (frame address, payload address): stable for one call, new for the next
    node_id: str
    points: int | None
    node_addr: int = 0
    root: int = 0  # the task coroutine whose await chain holds it
    parent: tuple[int, int] | None = None  # key of the node call awaiting it (nesting)


@dataclass
class OpenCall:
    key: tuple[int, int]
    node_id: str
    points: int | None
    node_addr: int
    start_mono: float  # estimated
    start_wall: float
    last_seen: float
    start_uncertainty: float  # half the gap its start fell into (s)
    root: int = 0
    parent: tuple[int, int] | None = None
    first_miss: float | None = None
    misses: int = 0


@dataclass(frozen=True)
class CompletedCall:
    node_id: str
    start_mono: float
    start_wall: float
    end_mono: float
    points: int | None
    uncertainty: float = 0.0  # worst error of start or end (s): half the gap each fell into
    key: tuple[int, int] | None = None
    parent: tuple[int, int] | None = None  # key of the call it ran inside

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_mono - self.start_mono)


class CallTracker:
    def __init__(self, miss_limit: int = 2) -> None:
        self.miss_limit = miss_limit
        self.open: dict[tuple[int, int], OpenCall] = {}
        self._prev_sample: float | None = None
        self._last_end: dict[str, float] = {}  # node -> end of its last call: a node is not re-entered

    def observe(
        self, mono: float, wall: float, calls: Iterable[CallObservation], complete: bool = True,
        alive: frozenset[tuple[int, int]] | set[tuple[int, int]] = frozenset(),
    ) -> tuple[list[OpenCall], list[CompletedCall]]:
        """Feed one sample; returns (calls born, calls completed).

        ``complete=False`` marks a sample that could not see every task (a
        failed or partial read): it can start or extend calls, never end them.
        ``alive`` are open calls not in any readable chain but known to run
        (their task is executing on the loop thread, and their coroutine's own
        state says running or suspended): seen now, not missing.
        """
        born: list[OpenCall] = []
        seen: set[tuple[int, int]] = set()
        prev = self._prev_sample if self._prev_sample is not None else mono
        done: list[CompletedCall] = []
        for obs in calls:
            if obs.key in seen:
                continue
            seen.add(obs.key)
            call = self.open.get(obs.key)
            if call is not None and obs.parent is not None and call.parent not in (None, obs.parent):
                # Same coroutine and payload addresses, but under another parent
                # call: the memory was reused by the next call between two looks.
                del self.open[obs.key]
                done.append(self._complete(call, call.last_seen, mono))
                call = None
            if call is None:
                begin = max(prev, self._last_end.get(obs.node_id, prev))
                start = (begin + mono) / 2
                call = OpenCall(obs.key, obs.node_id, obs.points, obs.node_addr, start,
                                wall - (mono - start), mono, (mono - begin) / 2, obs.root, obs.parent)
                self.open[obs.key] = call
                born.append(call)
            else:
                call.last_seen = mono
                call.misses = 0
                call.first_miss = None
                if call.parent is None:
                    call.parent = obs.parent
        if complete:
            for key, call in list(self.open.items()):
                if key in seen:
                    continue
                if key in alive:
                    # on the loop thread's stack with its task (a miss before this was a
                    # look that caught the chain mid-step)
                    call.last_seen, call.misses, call.first_miss = mono, 0, None
                    continue
                call.misses += 1
                if call.first_miss is None:
                    call.first_miss = mono
                if call.misses >= self.miss_limit:
                    del self.open[key]
                    done.append(self._complete(call, call.last_seen, call.first_miss))
        # A call cannot outlive the call awaiting it: children of ended calls end too.
        ended = [c for c in done]
        while ended:
            parent = ended.pop()
            for key, child in list(self.open.items()):
                if child.parent == parent.key and key not in seen:
                    del self.open[key]
                    finished = self._complete(child, child.last_seen, min(parent.end_mono * 2 - child.last_seen,
                                                                          child.first_miss or mono))
                    done.append(finished)
                    ended.append(finished)
        self._prev_sample = mono
        return born, done

    def _complete(self, call: OpenCall, last_seen: float, first_missing: float) -> "CompletedCall":
        """End ``call`` halfway between the last look that saw it and the first that did not."""
        end = max(call.start_mono, (last_seen + first_missing) / 2)
        self._last_end[call.node_id] = end
        uncertainty = max(call.start_uncertainty, abs(first_missing - last_seen) / 2)
        return CompletedCall(call.node_id, call.start_mono, call.start_wall, end, call.points, uncertainty,
                             call.key, call.parent)

    def unseen_candidates(self, seen: set[tuple[int, int]], running_roots: set[int]) -> list[OpenCall]:
        """Open calls missing from this sample whose task is running: worth a
        direct look at their coroutine before counting them missing."""
        return [c for k, c in self.open.items() if k not in seen and c.root in running_roots]

    def in_flight(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.open.values():
            if call.misses == 0:
                counts[call.node_id] = counts.get(call.node_id, 0) + 1
        return counts

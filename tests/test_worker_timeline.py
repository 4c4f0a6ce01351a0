"""Which node a worker thread served around an op call, from looks at it (pure: no target).

A look is an interval (frames read, then their ``self`` locals): a to_thread
worker reuses the same frame memory for its next job, so a look that began
inside an op but ended after it may show the next job's node, and a single
neighbouring look proves nothing (a pipeline gives the worker that just ran
one node's job the next node's job at once).
"""

from __future__ import annotations

from perfd.reconstruction.dag import _Timeline

MS = 1_000_000


def timeline(*looks: tuple[float, float, str | None]) -> _Timeline:
    t = _Timeline([], [], [])
    for start, done, node in looks:
        t.add(int(start * MS), int(done * MS), node)
    return t


def test_only_a_look_wholly_inside_the_op_places_it():
    t = timeline((0, 0.1, None), (4, 4.1, "plane"), (8, 12.5, "dbscan"))
    assert t.during(3 * MS, 5 * MS) == "plane"
    # began inside [9, 10] but ended after it: by then the worker ran the next job
    assert t.during(7.5 * MS, 10 * MS) is None
    assert t.during(1 * MS, 3 * MS) is None  # no look at all


def test_neighbouring_looks_are_reported_both_sides_within_the_window():
    t = timeline((0, 0.1, "voxel"), (4, 4.1, "voxel"), (8, 8.2, None), (12, 12.1, "outliers"))
    assert t.around(1 * MS, 3 * MS, 8 * MS) == ("voxel", "voxel")
    assert t.around(5 * MS, 7 * MS, 8 * MS) == ("voxel", None)  # idle after: one side only
    assert t.around(9 * MS, 11 * MS, 8 * MS) == (None, "outliers")
    assert t.around(5 * MS, 7 * MS, 0.5 * MS) == (None, None)  # both looks too far away
    # a look that straddles the op's start is no "before"
    assert timeline((0, 2, "voxel"), (4, 4.1, "voxel")).around(1 * MS, 3 * MS, 8 * MS) == (None, "voxel")


def test_old_looks_are_dropped_in_step():
    t = timeline(*((i, i + 0.1, "n") for i in range(5000)))
    assert len(t.times) == len(t.dones) == len(t.nodes) < 5000
    assert t.during(4998 * MS, 4999.5 * MS) == "n"

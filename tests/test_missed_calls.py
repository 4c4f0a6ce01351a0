"""Calls the tracker missed, placed from their Open3D ops (pure: fed looks and ops)."""

from __future__ import annotations

import pytest

from perfd.reconstruction.calls import CompletedCall, OpenCall
from perfd.reconstruction.missed_calls import Look, MissedCalls, OpSpan

MS = 1_000_000
NOW = 10_000 * MS  # far past every op: all settled


def looks(missed: MissedCalls, *spans: tuple[float, float, bool]) -> None:
    for start, end, clear in spans:
        missed.add_look(Look(int(start * MS), int(end * MS), clear))


def test_a_call_between_two_clear_looks_is_placed_halfway_into_each_gap():
    missed = MissedCalls()
    looks(missed, (0, 0.1, True), (1, 1.1, True), (5, 5.2, True))
    missed.add_op("n", OpSpan(7, int(2 * MS), int(3 * MS), 500))
    missed.add_op("n", OpSpan(7, int(3.1 * MS), int(3.2 * MS), 500))  # the same call's second op
    [call] = missed.take(NOW, [], [], {"n": 5})
    # start in (look at 1 ms, first op at 2 ms), end in (last op at 3.2 ms, look read by 5.2 ms)
    assert call.start_mono == pytest.approx(1.5e-3)
    assert call.end_mono == pytest.approx(4.2e-3)
    assert call.uncertainty == pytest.approx(1.0e-3)
    assert call.points == 500 and call.node_id == "n"


def test_only_clear_looks_bound_a_call():
    missed = MissedCalls()
    # the look at 1.5 ms ended after the op began; the one at 4 ms was cut at a running coroutine
    looks(missed, (0, 0.1, True), (1.5, 2.5, True), (4, 4.1, False), (6, 6.1, True))
    missed.add_op("n", OpSpan(7, int(2 * MS), int(3 * MS), None))
    [call] = missed.take(NOW, [], [], {"n": 1})
    assert call.start_mono == pytest.approx(1.0e-3)  # from the look at 0 ms
    assert call.end_mono == pytest.approx(4.55e-3)  # to the read of the look at 6 ms (ends 6.1)


def test_ops_of_a_call_the_tracker_saw_make_no_call():
    missed = MissedCalls()
    looks(missed, (0, 0.1, True), (1, 1.1, True), (5, 5.2, True), (50, 50.1, True), (60, 60.1, True))
    missed.add_op("n", OpSpan(7, int(2 * MS), int(3 * MS), None))  # inside the tracked call
    missed.add_op("n", OpSpan(7, int(52 * MS), int(53 * MS), None))  # its call would overlap the open one
    tracked = [CompletedCall("n", 1.8e-3, 0.0, 4.0e-3, None, 0.5e-3)]
    running = [OpenCall((1, 2), "n", None, 0, 55e-3, 0.0, 56e-3, 1e-3)]
    assert missed.take(NOW, tracked, running, {"n": 9}) == []


def test_no_more_calls_than_the_exact_count_leaves_room_for():
    missed = MissedCalls()
    looks(missed, *[(10.0 * i, 10.0 * i + 0.1, True) for i in range(10)])
    for i in range(5):
        missed.add_op("n", OpSpan(7, int((10 * i + 3) * MS), int((10 * i + 4) * MS), None))
    room = {"n": 2}
    assert len(missed.take(NOW, [], [], room)) == 2
    assert room["n"] == 0
    assert missed.take(NOW, [], [], {"n": 9}) == []  # judged once: the rest are gone


def test_ops_wait_until_settled_and_need_a_look_on_both_sides():
    missed = MissedCalls(settle_ns=300 * MS)
    looks(missed, (0, 0.1, True))
    missed.add_op("n", OpSpan(7, int(2 * MS), int(3 * MS), None))
    assert missed.take(100 * MS, [], [], {"n": 1}) == []  # not settled yet
    assert missed.take(400 * MS, [], [], {"n": 1}) == []  # no look after it: no bound
    assert missed.unbounded == 1


def test_ops_on_other_threads_or_far_apart_are_separate_calls():
    missed = MissedCalls()
    looks(missed, *[(1.0 * i, 1.0 * i + 0.1, True) for i in range(0, 40, 10)])
    missed.add_op("n", OpSpan(7, int(2 * MS), int(3 * MS), None))
    missed.add_op("n", OpSpan(8, int(3.5 * MS), int(4 * MS), None))  # another worker: another call
    missed.add_op("n", OpSpan(8, int(14 * MS), int(15 * MS), None))  # the same worker 10 ms later
    assert len(missed.take(NOW, [], [], {"n": 9})) == 3

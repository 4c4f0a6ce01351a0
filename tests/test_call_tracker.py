"""The call tracker's state machine, fed sample sequences (it is pure: no target needed)."""

from __future__ import annotations

import pytest

from perfd.reconstruction.calls import CallObservation, CallTracker
from perfd.reconstruction.stats import NodeStats

P = 0.004  # 250 Hz


def obs(frame: int, node: str = "n", payload: int = 1, points: int | None = 100) -> CallObservation:
    return CallObservation((frame, payload), node, points)


def run(tracker: CallTracker, timeline: list[list[CallObservation]], complete: list[bool] | None = None):
    born, done = [], []
    for i, calls in enumerate(timeline):
        b, d = tracker.observe(i * P, 1000.0 + i * P, calls, complete[i] if complete else True)
        born += b
        done += d
    return born, done


def test_call_duration_is_corrected_by_half_a_period_on_both_ends():
    # seen in samples 2..6, missing from 7 on: true span ≈ (1.5P, 6.5P)
    timeline = [[], [], *[[obs(1)]] * 5, [], [], []]
    born, done = run(CallTracker(), timeline)
    assert len(born) == 1 and len(done) == 1
    assert done[0].start_mono == pytest.approx(1.5 * P)
    assert done[0].end_mono == pytest.approx(6.5 * P)
    assert done[0].duration_s == pytest.approx(5 * P)


def test_one_missed_sample_does_not_split_a_call():
    timeline = [[obs(1)], [obs(1)], [], [obs(1)], [], [], []]
    _, done = run(CallTracker(miss_limit=2), timeline)
    assert len(done) == 1


def test_incomplete_samples_never_end_calls():
    timeline = [[obs(1)], [], [], [], [obs(1)], [], []]
    _, done = run(CallTracker(), timeline, complete=[True, False, False, False, True, True, True])
    assert len(done) == 1 and done[0].start_mono == pytest.approx(-0.0 * P, abs=1e-9)


def test_reused_frame_address_with_a_new_payload_is_a_new_call():
    timeline = [[obs(1, payload=10)], [obs(1, payload=10)], [obs(1, payload=11)], [], [], []]
    born, done = run(CallTracker(miss_limit=1), timeline)
    assert len(born) == 2 and len(done) == 2


def test_concurrent_calls_of_different_nodes_and_in_flight_counts():
    tracker = CallTracker()
    tracker.observe(0.0, 0.0, [obs(1, "a"), obs(2, "b"), obs(3, "b", payload=2)])
    assert tracker.in_flight() == {"a": 1, "b": 2}


def test_node_stats_meanings():
    tracker, stats = CallTracker(miss_limit=1), NodeStats()
    for i, calls in enumerate([[obs(1, points=50)], [obs(1, points=50)], [], [obs(2, payload=3, points=70)], []]):
        born, done = tracker.observe(i * 0.001, 100 + i * 0.001, calls)
        for c in born:
            stats.started(c)
        for c in done:
            stats.finished(c)
    assert stats.calls_total == 2
    assert stats.last_point_count == 70
    assert stats.last_exec_ms == pytest.approx(1.0)
    assert stats.avg_exec_ms == pytest.approx(1.25)  # 1.5 ms then 1.0 ms
    assert stats.last_seen_ts == pytest.approx(100.0025)
    assert stats.throughput_pps(0.0045) == pytest.approx(120.0)
    assert stats.throughput_pps(0.0045, calls_in_window=3) == pytest.approx(120.0)  # one off: counter granularity
    assert stats.throughput_pps(0.0045, calls_in_window=4) == pytest.approx(240.0)  # unseen calls at mean size
    assert stats.throughput_pps(1.5) == pytest.approx(0.0)


def test_points_of_a_call_the_tracker_missed_come_from_its_op_and_never_overwrite_a_newer_call():
    tracker, stats = CallTracker(miss_limit=1), NodeStats()
    for i, calls in enumerate([[obs(1, points=50)], [obs(1, points=50)], [], []]):
        for c in tracker.observe(i * P, 100 + i * P, calls)[0]:
            stats.started(c)
    assert stats.last_point_count == 50
    assert not stats.op_points(1.2 * P, 50)  # an op of that call (begun after it): nothing new
    assert stats.op_points(3 * P, 80)  # an op of a call never seen
    assert stats.last_point_count == 80
    assert not stats.op_points(2.5 * P, 60)  # arrives late, from before the call shown: ignored
    assert stats.last_point_count == 80
    for c in tracker.observe(4 * P, 100 + 4 * P, [obs(2, payload=3, points=70)])[0]:
        stats.started(c)  # the next call seen: its own points
    assert stats.last_point_count == 70


def test_calls_whose_ends_fall_into_a_scheduling_gap_are_counted_but_not_timed():
    tracker, stats = CallTracker(), NodeStats()
    # ticks every 1 ms, then perfd is not scheduled for 50 ms while the call ends
    times = [0.000, 0.001, 0.002, 0.003, 0.053, 0.054, 0.055]
    seen = [[], [obs(1)], [obs(1)], [obs(1)], [], [], []]
    for t, calls in zip(times, seen):
        born, done = tracker.observe(t, t, calls)
        for c in born:
            stats.started(c)
        for c in done:
            stats.finished(c)
    assert stats.calls_total == 1 and stats.untimed_calls == 1
    assert list(stats.recent_ms) == []
    # with nothing better, the estimate is reported rather than 0
    assert stats.avg_exec_ms == pytest.approx(27.5)  # (0.5 ms, 28 ms) estimated


def test_calls_known_alive_while_their_task_runs_are_kept_but_not_calls_already_gone():
    tracker = CallTracker()
    a = CallObservation((1, 1), "a", None, root=7)
    b = CallObservation((2, 2), "b", None, root=7)
    tracker.observe(0.000, 0, [a, b])
    tracker.observe(0.001, 0, [a])  # b missing while the chain is suspended
    assert [c.key for c in tracker.unseen_candidates({(1, 1)}, {7})] == [(2, 2)]
    assert {c.key for c in tracker.unseen_candidates(set(), {7})} == {(1, 1), (2, 2)}
    # the task runs: chain unreadable; a's coroutine is still running, b's has finished
    _, done = tracker.observe(0.002, 0, [], alive={(1, 1)})
    assert [c.node_id for c in done] == ["b"]
    assert "a" in tracker.in_flight()
    _, done = tracker.observe(0.003, 0, [], alive={(1, 1)})
    assert done == []
    _, done = tracker.observe(0.004, 0, [])  # a's coroutine finished: no longer alive
    _, done = tracker.observe(0.005, 0, [])
    assert [c.node_id for c in done] == ["a"] and done[0].end_mono == pytest.approx(0.0035)


def test_a_call_missed_by_a_look_that_straddled_a_step_is_kept_once_seen_alive():
    tracker = CallTracker()
    a = CallObservation((1, 1), "a", None, root=7)
    tracker.observe(0.000, 0, [a])
    tracker.observe(0.001, 0, [])  # the look caught the task starting a step: chain cut short
    _, done = tracker.observe(0.002, 0, [], alive={(1, 1)})  # its coroutine's own state: running
    assert done == [] and "a" in tracker.in_flight()
    tracker.observe(0.003, 0, [a])
    tracker.observe(0.004, 0, [])
    _, done = tracker.observe(0.005, 0, [])
    assert [c.node_id for c in done] == ["a"] and done[0].end_mono == pytest.approx(0.0035)


def test_a_reused_address_under_a_new_parent_is_a_new_call():
    tracker = CallTracker()
    child = lambda parent: CallObservation((5, 50), "voxel", None, parent=parent)  # noqa: E731
    tracker.observe(0.000, 0, [CallObservation((1, 10), "crop", None), child((1, 10))])
    # next frame: a new crop call, and the voxel coroutine + payload landed at the same addresses
    born, done = tracker.observe(0.001, 0, [CallObservation((2, 20), "crop", None), child((2, 20))])
    assert "voxel" in [c.node_id for c in done] and "voxel" in [c.node_id for c in born]


def test_children_end_with_the_call_awaiting_them():
    tracker = CallTracker()
    parent, kid = CallObservation((1, 10), "crop", None), CallObservation((5, 50), "voxel", None, parent=(1, 10))
    tracker.observe(0.000, 0, [parent, kid])
    tracker.observe(0.001, 0, [parent, kid])
    tracker.observe(0.002, 0, [])
    _, done = tracker.observe(0.003, 0, [], alive={(5, 50)})  # the child looked alive, its parent ended
    ends = {c.node_id: c.end_mono for c in done}
    assert set(ends) == {"crop", "voxel"} and ends["voxel"] <= ends["crop"]

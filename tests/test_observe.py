"""Node calls read from a real target's await chains: what the DAG source
believes about a call must come from memory the call still owned."""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import TARGET_VERSIONS, TARGETS, Target, python_for
from perfd.cpython.chains import AwaitChains
from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.stacks import StackReader
from perfd.cpython.tasks import calibrate
from perfd.profile import AppProfile
from perfd.reconstruction.app_state import point_count
from perfd.reconstruction.observe import NodeCallFinder


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_a_payload_freed_after_its_call_was_seen_is_not_read_as_its_points(version):
    """The call is seen suspended; it then finishes and its payload's memory is
    reused by another payload — a later read of that address finds a valid dict
    with other points. perfd must report nothing rather than those points."""
    target = Target([python_for(version), str(TARGETS / "payload_reuse.py")], ready_line=None)
    try:
        addrs = json.loads(target.proc.stdout.readline())
        assert target.proc.stdout.readline().strip() == "READY"
        interp = locate_interpreter(target.pid)
        stacks = StackReader(interp)
        chains = AwaitChains(stacks, calibrate(target.pid, interp.exe))
        profile = AppProfile.model_validate({
            "name": "t", "state": {"node_registry": ["m:x"]},
            "node_entry": {"qualname": "holder", "file_suffix": "payload_reuse.py", "node_id_local": "node_id",
                           "node_local": "node", "payload_local": "payload"}})
        finder = NodeCallFinder(profile, stacks)
        calls = finder.calls(chains.refresh({addrs["coro"]}))
        assert [c.key for c in calls] == [(addrs["coro"], addrs["payload"])]
        assert calls[0].node_id == "node-1"
        assert finder.point_count(calls[0].key, chains) == 1234  # alive: read

        os.kill(target.pid, signal.SIGUSR1)
        assert target.proc.stdout.readline().strip() == "REUSED"
        # what the address holds now: another payload, perfectly readable
        assert point_count(stacks, addrs["payload"], "points") == 99
        assert finder.point_count(calls[0].key, chains) is None  # its call is gone: not its points
        stacks.close()
    finally:
        target.stop()

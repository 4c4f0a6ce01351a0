"""Remote object reader and path language against values planted in real targets."""

from __future__ import annotations

import os
import random

import pytest

from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.objects import ArrayInfo, Failure, Limits, Opaque, SetInfo
from perfd.cpython.paths import ObjectPath, evaluate, locate
from perfd.cpython.stacks import StackReader
from perfd.errors import UsageError
from conftest import TARGET_VERSIONS

M = "__main__"


@pytest.fixture(params=TARGET_VERSIONS)
def reader(request, spawn):
    target = spawn("reader_objects.py", version=request.param)
    r = StackReader(locate_interpreter(target.pid))
    yield r
    r.close()


def ev(reader: StackReader, path: str, depth: int = 1):
    return evaluate(reader, f"{M}:{path}", depth=depth)


def test_scalars_and_strings(reader) -> None:
    assert ev(reader, "ints") == (0, 1, -1, 2 ** 30, -(2 ** 30) + 1, 2 ** 64 + 5, -(2 ** 100), 10 ** 50, True, False)
    assert ev(reader, "strs") == ("", "ascii", "café", "Ωμέγα", "😀 smile", "x" * 5000, "interned_name")
    s = ev(reader, "scalars", depth=2)
    assert s["float"] == -1.25e-3 and s["none"] is None and s["bytes"] == b"\x00\x01abc"
    assert s["tuple"] == (1, "two", 3.0) and s["list"] == [None, True] and s["empty"] == {}
    assert isinstance(s["set"], SetInfo) and s["set"].size == 5
    assert isinstance(s["frozen"], SetInfo) and (s["frozen"].type_name, s["frozen"].size) == ("frozenset", 3)


def test_big_dict_lookup_and_iteration(reader) -> None:
    assert ev(reader, "big['k9999']") == 9999
    assert ev(reader, 'big["k0"]') == 0
    assert ev(reader, "big[k4242]") == 4242
    whole = ev(reader, "big")
    assert whole == {f"k{i}": i for i in range(10_000)}
    missing = ev(reader, "big['nope']")
    assert isinstance(missing, Failure) and missing.reason == "missing"
    assert ev(reader, "int_keys[-3]") == "minus three"
    assert ev(reader, f"int_keys[{2 ** 70}]") == "huge"


def test_instance_attributes(reader) -> None:
    assert ev(reader, "plain.name") == "plain"
    assert ev(reader, "plain.count") == 3
    assert ev(reader, "plain.added_later") == [1, 2, 3]
    assert ev(reader, "many.a39") == 39 and ev(reader, "many.name") == "plain"
    assert ev(reader, "slotted.x") == 11 and ev(reader, "slotted.label") == "slot-label"
    assert ev(reader, "exc.note") == "dict offset"
    assert ev(reader, "node_manager.nodes['alpha'].name") == "alpha-node"
    assert ev(reader, "node_manager.nodes[β].name") == "beta-node"
    assert isinstance(ev(reader, "plain", depth=0), Opaque)
    assert ev(reader, "Plain.__name__") == "Plain" or isinstance(ev(reader, "Plain.__name__"), Failure)
    nope = ev(reader, "plain.nothing_here")
    assert isinstance(nope, Failure) and nope.reason == "missing"


def test_cells_and_sequences(reader) -> None:
    assert sorted(ev(reader, "cells"), key=str) == sorted(["in a cell", 99], key=str)
    assert ev(reader, "scalars['tuple'][-1]") == 3.0
    assert isinstance(ev(reader, "scalars['tuple'][7]"), Failure)


def test_ndarray(reader) -> None:
    arr = ev(reader, "array")
    if arr is None:
        pytest.skip("numpy is not installed for this target CPython")
    assert isinstance(arr, ArrayInfo) and (arr.ndim, arr.shape, arr.dtype) == (3, (3, 4, 5), "float32")
    arr_i = ev(reader, "array_i")
    assert (arr_i.ndim, arr_i.shape, arr_i.dtype) == (2, (2, 6), "int64")
    views = ev(reader, "views", depth=2)
    assert [v.shape for v in views] == [(2, 6), (256,), (0, 3), (10 ** 12,)]


def test_an_ndarray_read_through_a_stale_pointer_is_a_failure(reader) -> None:
    """A freed array's memory reads as a random shape; its data would lie outside the mapping."""
    from perfd.cpython.objects import DecodeError

    arr = ev(reader, "array_i")
    if arr is None:
        pytest.skip("numpy is not installed for this target CPython")
    raw = reader.mem.read(arr.address, 64)
    reader.objects._check_extent(arr.address, raw, (2, 6))  # the real shape: fine
    with pytest.raises(DecodeError):
        reader.objects._check_extent(arr.address, raw, (34_344_911_047, 6))


def test_bounds_are_enforced(reader) -> None:
    tiny = Limits(max_items=100)
    bound = evaluate(reader, f"{M}:big", limits=tiny)
    assert isinstance(bound, Failure) and bound.reason == "bound"
    few_bytes = evaluate(reader, f"{M}:strs", limits=Limits(max_bytes=2000))
    assert isinstance(few_bytes, Failure) and few_bytes.reason == "bound"


def test_garbage_addresses_are_failures(reader) -> None:
    objects = reader.objects
    rng = random.Random(4)
    for addr in [0, 1, 8, 0xFFFF_FFFF_FFFF_FFF0, 1 << 63, 1 << 47] + [rng.getrandbits(48) for _ in range(200)]:
        assert isinstance(objects.decode(addr, depth=2), (Failure, Opaque, int, float, str, bytes, tuple, list, dict,
                                                           SetInfo, ArrayInfo, type(None)))
        assert isinstance(objects.attribute(addr, "x"), (int, Failure))
        assert isinstance(objects.item(addr, "k"), (int, Failure))
    # a real object's interior: valid memory, wrong types
    plain = locate(reader, f"{M}:plain")
    for delta in range(1, 200, 7):
        objects.decode(plain + delta, depth=2)


def test_path_parser() -> None:
    p = ObjectPath.parse("app.services.nodes.instance:node_manager.nodes[key].name")
    assert p.module == "app.services.nodes.instance"
    assert p.steps == (("attr", "node_manager"), ("attr", "nodes"), ("item", "key"), ("attr", "name"))
    assert ObjectPath.parse("m:x[0][-2]['a b'][\"c\"]").steps == (
        ("attr", "x"), ("item", 0), ("item", -2), ("item", "a b"), ("item", "c"))
    for bad in ("nocolon", "m:", ":x", "m:x..y", "m:x[", "m:1x"):
        with pytest.raises(UsageError):
            ObjectPath.parse(bad)


def test_missing_module_is_a_failure(reader) -> None:
    got = evaluate(reader, "no.such.module:x")
    assert isinstance(got, Failure) and "not imported" in got.detail


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_remembered_key_positions_follow_every_change(spawn, version) -> None:
    """Lookups remember where a key sat; inserts, deletes, re-inserts, resizes
    and per-instance values must never make them answer from the past."""
    import signal

    target = spawn("dict_mutations.py", version=version)
    r = StackReader(locate_interpreter(target.pid))
    try:
        def look() -> dict:
            out = {}
            for path in ("table['late']", "table['k3']", "table['k5']", "table['grow499']", "thing.b", "other.b"):
                value = ev(r, path)
                out[path] = None if isinstance(value, Failure) else value
            return out

        expected = [
            {"table['late']": None, "table['k3']": 3, "table['k5']": 5, "table['grow499']": None,
             "thing.b": None, "other.b": 3},
        ]
        for change in ({"table['late']": 7}, {"table['k3']": None}, {"table['k3']": 33}, {"table['k5']": 55},
                       {"table['grow499']": 499}, {"thing.b": 4}):
            expected.append({**expected[-1], **change})
        assert look() == expected[0]
        assert look() == expected[0]  # answered from remembered positions
        for n, want in enumerate(expected[1:], 1):
            os.kill(target.pid, signal.SIGUSR1)
            assert target.proc.stdout.readline().strip() == f"STEP {n}"
            assert look() == want, n
            assert look() == want, n
    finally:
        r.close()

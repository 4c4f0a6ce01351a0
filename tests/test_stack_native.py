"""The stack reader's native core (perfd/cpython/_walk.c) against the Python
walker it replaces, and against memory that makes no sense.

The Python walker is the oracle: with the target stopped, both read the same
memory, so every thread's frames must be equal — name, file, line and the
identities later stages key on (frame, code, generator addresses, owner).
Between stops the target runs on, so the native walker's memory of earlier
samples (speculative reads, frames kept from the last sample) is exercised
as it is in the sampler.
"""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TARGET_VERSIONS
from perfd.cpython import native_walk
from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.layouts import generated_layout
from perfd.cpython.stacks import StackReader
from perfd.sampling import Sampler
from test_stack_splice import stopped_comparisons


def stack_tuples(threads) -> dict[int, tuple[bool, list[tuple]]]:  # noqa: ANN001 - ThreadStacks
    """Per thread: whether it is suspect, and every frame's identity and position."""
    return {t.native_thread_id: (t.suspect, [(f.qualname, f.filename, f.line, f.frame_addr, f.code_addr, f.gen_addr,
                                              f.owner) for f in t.frames])
            for t in threads}


def _frames(reader: StackReader) -> dict[int, tuple[bool, list[tuple]]]:
    return stack_tuples(reader.sample().threads)


def oracle_agrees(got: dict, want: dict) -> bool:
    """Whether the native walker's threads equal the Python oracle's, frame for frame,
    leaving out threads the oracle gave up on (suspect: it dropped them). Returns
    whether it gave up on any: a target stopped mid-update fails every walk of that
    thread. (It once dropped the threads listed after that one too: their code
    objects were read after the torn thread's garbage in one batch, which stopped
    there; ``test_memory.py``.)"""
    gave_up = {k for k, (suspect, _) in want.items() if suspect}
    assert ({k: f for k, (_, f) in got.items() if k not in gave_up}
            == {k: f for k, (_, f) in want.items() if k not in gave_up})
    return bool(gave_up)


@pytest.mark.parametrize("version", TARGET_VERSIONS)
@pytest.mark.parametrize("script", ["stack_splice.py", "reader_churn.py", "reader_stacks.py", "frame_owners.py"])
def test_native_walk_equals_python_walk(spawn, version: str, script: str) -> None:
    target = spawn(script, version=version)
    interp = locate_interpreter(target.pid)
    native = StackReader(interp, walker="native")
    compared = frames = gave_up = 0
    try:
        for got, want in stopped_comparisons(target.pid, interp, native, 80, _frames):
            gave_up += oracle_agrees(got, want)
            compared += 1
            frames += sum(len(f) for _, f in want.values())
    finally:
        native.close()
    assert compared == 80 and frames > 80 * 10 and gave_up <= 4
    # the native walker kept unchanged frames from earlier samples rather than rebuilding them
    assert native.reused_threads + native.spliced_frames > 0


def test_the_native_walker_is_the_default_and_reported(spawn) -> None:
    assert native_walk.status().available, native_walk.status().reason  # ./dev builds it
    target = spawn("reader_stacks.py", version="3.12")
    interp = locate_interpreter(target.pid)
    reader = StackReader(interp)
    assert reader.walker == "native"
    reader.close()
    sampler = Sampler(interp, 250)
    sampler.start()
    try:
        deadline = time.monotonic() + 10
        while sampler.samples_total < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = sampler.status()
    finally:
        sampler.stop()
    assert status.walker == "native" and status.walker_note is None
    assert status.samples_total >= 50 and status.samples_failed == 0


def test_without_the_library_perfd_walks_in_python_and_says_why(spawn) -> None:
    target = spawn("reader_stacks.py", version="3.12")
    code = (
        "import json, sys\n"
        "from perfd.cpython.discovery import locate_interpreter\n"
        "from perfd.cpython.stacks import StackReader\n"
        "from perfd.doctor import check_native_walker\n"
        f"r = StackReader(locate_interpreter({target.pid}))\n"
        "c = check_native_walker()\n"
        "print(json.dumps([r.walker, len(r.sample().threads), c.ok, c.detail]))\n"
    )
    env = {**os.environ, "PERFD_STACK_WALKER": "python"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    walker, threads, ok, detail = __import__("json").loads(out.stdout)
    assert walker == "python" and threads >= 2
    assert not ok and "PERFD_STACK_WALKER=python" in detail


# -- memory that makes no sense ------------------------------------------------

_WORLD = 1 << 16


class _World:
    """Random bytes in this very process (so every read is real and many pointers
    land in mapped memory) and a thread list over them that is consistent often
    enough to get the walk going. Its GIL (a holder word and a switch count 16
    bytes on) changes hands 0-2 times between samples, so threads go unread."""

    def __init__(self, rng: random.Random, layout) -> None:
        self.rng, self.layout = rng, layout
        self.buf = ctypes.create_string_buffer(_WORLD)
        self.base = ctypes.addressof(self.buf)
        self.gil = self.base + rng.randrange(0, _WORLD - 24) // 8 * 8
        self.interps: list[int] = []
        self.tstates: list[int] = []

    def walker(self) -> native_walk.NativeWalk:
        nw = native_walk.NativeWalk.create(os.getpid(), self.layout)
        assert nw is not None
        nw.set_gil(self.gil, 16)
        return nw

    def touch(self) -> None:
        """The same memory again with a few words changed: mostly the frames of the
        last sample, which the walker keeps rather than reports again."""
        rng, base = self.rng, self.base
        if rng.random() < 0.5:
            switches = ctypes.c_uint64.from_address(self.gil + 16)
            switches.value = (switches.value + rng.choice((0, 0, 1, 2))) % (1 << 64)
            ctypes.c_uint64.from_address(self.gil).value = rng.choice(self.tstates + [base])
        for _ in range(rng.randrange(0, 3)):
            ctypes.c_uint64.from_address(base + rng.randrange(0, _WORLD - 8) // 8 * 8).value = rng.choice(
                (0, rng.randrange(0, 300), base + rng.randrange(0, _WORLD - 8) // 8 * 8))

    def renew(self) -> None:
        """New random memory and a new thread list (matching the memory, mostly)."""
        rng, base, layout = self.rng, self.base, self.layout
        ctypes.memmove(self.buf, _random_words(rng, base), _WORLD)
        n = rng.randrange(0, 8)
        self.tstates = [base + rng.randrange(0, _WORLD - layout.tstate_size) // 8 * 8 for _ in range(n)]
        self.interps = [base + rng.randrange(0, _WORLD - layout.interp_threads_head - 8) // 8 * 8]
        if rng.random() < 0.8 and self.tstates:  # a list that matches: heads and next pointers
            ctypes.c_uint64.from_address(self.interps[0] + layout.interp_threads_head).value = self.tstates[0]
            for a, b in zip(self.tstates, self.tstates[1:] + [0]):
                ctypes.c_uint64.from_address(a + layout.tstate_next).value = b
        if rng.random() < 0.6:
            _plant_chains(rng, layout, base, self.tstates)


def _answer_codes(rng: random.Random, nw: native_walk.NativeWalk, layout) -> None:
    """Tell the walker, at random, what each code object it asks about is."""
    for addr, head in nw.needed_codes():
        assert len(head) == layout.code_qualname
        nw.set_code(addr, head, rng.choice((0, 1, 1, 2)), rng.randrange(-5, 50))


def _check_words(info: list[int], raw: list[int], firsts: list[int], n_threads: int,
                 outcomes: dict[str, int]) -> None:
    """The decoded words are laid out as promised; counts samples with frames and with kept frames."""
    assert len(info) == 6 * n_threads
    assert sum(info[k + 5] for k in range(0, len(info), 6)) * 4 == len(raw)
    # first locals: none for a thread as last sample, the new frames' when the
    # kept frames' are unchanged, else every frame's
    sent = [0 if f & native_walk.SAME else new if f & native_walk.FIRSTS_KEPT else n_frames
            for _, _, _, f, n_frames, new in zip(*[iter(info)] * 6)]
    assert sum(sent) == len(firsts)
    assert all(info[k + 5] <= info[k + 4] for k in range(0, len(info), 6))
    for what, seen in (("frames", raw), ("kept", any(info[k + 4] > info[k + 5] for k in range(0, len(info), 6)))):
        if seen:
            outcomes[what] = outcomes.get(what, 0) + 1


def fuzz(version: str, seed: int, rounds: int) -> dict[str, int]:
    """Point the native walker at random memory (``_World``). Returns outcome counts."""
    rng = random.Random(seed)
    layout = generated_layout(version)
    world = _World(rng, layout)
    nw = world.walker()
    outcomes: dict[str, int] = {}
    for i in range(rounds):
        if i and rng.random() < 0.5:
            world.touch()
        else:
            world.renew()
            nw.set_threads(world.interps, world.tstates)
        for attempt in range(3):
            lenient = attempt == 2
            one_call = rng.random() < 0.5  # sample = walk + decode when no code needs Python
            rc = nw.sample(lenient) if one_call else nw.walk(lenient)
            if rc == native_walk.NEED_CODES or (rc == native_walk.OK and not one_call):
                _answer_codes(rng, nw, layout)
                rc = nw.decode(lenient)
            if rc == native_walk.OK:
                if one_call and rng.random() < 0.1:
                    assert nw.decode(lenient) == native_walk.TORN  # a decode without a walk is refused
                else:
                    _check_words(*nw.result(), len(world.tstates), outcomes)
                    if nw.unread:
                        outcomes["unread"] = outcomes.get("unread", 0) + 1
            key = {native_walk.OK: "ok", native_walk.RELIST: "relist", native_walk.TORN: "torn"}.get(rc, f"errno{-rc}")
            outcomes[key] = outcomes.get(key, 0) + 1
            if rc == native_walk.TORN:
                nw.forget()
        if i % 7 == 0:
            nw.forget()
    nw.close()
    return outcomes


def fuzz_loop(version: str, seed: int, rounds: int) -> dict[str, int]:
    """The paced loop (a C thread) over random memory changing under it, with a
    small ring so it fills: Python finishes parked samples as the sampler does
    (codes answered at random, new thread lists), resets it now and then, and
    checks every sample's words. Returns outcome counts."""
    rng = random.Random(seed)
    layout = generated_layout(version)
    world = _World(rng, layout)
    world.renew()
    nw = world.walker()
    nw.set_threads(world.interps, world.tstates)
    listed = len(world.tstates)  # the walker's thread list (memory renewed since may not match it)
    loop = nw.start_loop(100_000, 8, 3, 3, None)  # 10 kHz into 8 slots
    outcomes: dict[str, int] = {}
    gen = 0
    try:
        for i in range(rounds):
            if rng.random() < 0.3:
                world.renew()
            else:
                world.touch()
            if rng.random() < 0.05:
                gen = loop.reset()
            time.sleep(rng.choice((0.0, 0.0002, 0.001)))
            upto, taken = loop.take(0.002)
            for k, ls in enumerate(taken):
                assert ls.done_ns >= ls.mono_ns > 0 and 1 <= ls.attempts <= 3 and ls.gen <= gen
                if ls.rc == native_walk.OK:
                    _check_words(*native_walk.split_words(ls.words, ls.n_threads), ls.n_threads, outcomes)
                    outcomes["loop_ok"] = outcomes.get("loop_ok", 0) + 1
                    if ls.unread:
                        outcomes["unread"] = outcomes.get("unread", 0) + 1
                    continue
                assert k == len(taken) - 1  # the loop parks on a sample Python must finish
                outcomes[f"parked_{ls.rc}"] = outcomes.get(f"parked_{ls.rc}", 0) + 1
                if ls.rc == native_walk.NEED_CODES:
                    _answer_codes(rng, nw, layout)
                    if nw.decode(True) == native_walk.OK:
                        _check_words(*nw.result(), listed, outcomes)
                elif ls.rc == native_walk.RELIST:
                    nw.set_threads(world.interps, world.tstates)
                    listed = len(world.tstates)
            loop.release(upto)
        outcomes["skipped"] = loop.skipped
    finally:
        nw.close()  # stops the loop first
    return outcomes


def _random_words(rng: random.Random, base: int) -> bytes:
    """A world of words biased to pointers into itself, small ints and zeros."""
    words = []
    for _ in range(_WORLD // 8):
        pick = rng.random()
        if pick < 0.35:
            words.append(base + rng.randrange(0, _WORLD - 8) // 8 * 8)
        elif pick < 0.55:
            words.append(rng.randrange(0, 300))
        elif pick < 0.65:
            words.append(0)
        elif pick < 0.7:
            words.append(rng.randrange(1, 1 << 64))
        else:
            words.append(rng.randrange(0x7F0000000000, 0x7FFFFFFFFFFF))
    return b"".join(w.to_bytes(8, "little") for w in words)


def _plant_chains(rng: random.Random, layout, base: int, tstates: list[int]) -> None:
    """Give each thread a frame chain that passes the walker's checks (so frames
    come out and are compared with the last sample's), then flip a few words."""
    def put(addr: int, value: int, size: int = 8) -> None:
        if base <= addr and addr + size <= base + _WORLD:
            ctypes.memmove(addr, value.to_bytes(size, "little"), size)

    def spot(size: int) -> int:
        return base + rng.randrange(0, _WORLD - size) // 8 * 8

    codes = [spot(layout.code_qualname + 8) for _ in range(3)]
    for t in tstates:
        frames = [(spot(80), rng.choice(codes), rng.randrange(0, 40), rng.choice((0, 0, 0, 1)))
                  for _ in range(rng.randrange(1, 12))]
        _plant_chain(put, layout, t, frames, spot(16))
    for _ in range(rng.randrange(0, 4)):
        put(spot(8), rng.randrange(0, 1 << 64))


def _plant_chain(put, layout, tstate: int, frames: list[tuple[int, int, int, int]], cframe: int) -> None:
    """Thread ``tstate``'s frame chain: ``frames`` innermost first, each (address,
    code object, instruction index, owner); the outermost is the entry frame (owned
    by the C stack where the version has that owner, else flagged ``is_entry``). The
    thread's current frame is the first, through ``cframe`` (16 bytes) on 3.11/3.12."""
    cstack = layout.get("frame.owner_cstack", -1)
    for k, (f, code, step, owner) in enumerate(frames):
        last = k == len(frames) - 1
        put(f + layout.frame_previous, 0 if last else frames[k + 1][0])
        put(f + layout.frame_code, code)
        put(f + layout.frame_instr, code + layout.code_code_adaptive + 2 * step)
        put(f + layout.frame_owner, cstack if last and cstack >= 0 else owner, 1)
        if layout.get("frame.is_entry") is not None:
            put(f + layout.frame_is_entry, int(last), 1)
    if layout.get("tstate.current_frame") is not None:
        put(tstate + layout.tstate_current_frame, frames[0][0])
    else:
        put(tstate + layout.tstate_cframe, cframe)
        put(cframe + layout.cframe_current_frame, frames[0][0])


def _in_child(call: str) -> dict[str, int]:
    """Run ``test_stack_native.<call>`` in a child process (a memory error in C would
    kill the process, not fail an assert) and return its outcome counts."""
    code = f"import json, test_stack_native as t; print(json.dumps(t.{call}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    return __import__("json").loads(out.stdout)


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_native_walker_on_random_memory(version: str) -> None:
    outcomes = _in_child(f"fuzz({version!r}, 11, 1200)")
    # frames came out often, and samples tore often: both paths ran
    assert outcomes.get("frames", 0) > 100 and outcomes.get("torn", 0) > 100, outcomes
    assert outcomes.get("kept", 0) > 0 and outcomes.get("unread", 0) > 0, outcomes
    assert set(outcomes) <= {"ok", "relist", "torn", "frames", "kept", "unread"}, outcomes


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_native_loop_on_random_memory(version: str) -> None:
    # the paced loop's thread, ring and hand-over to Python, over memory changing under it
    outcomes = _in_child(f"fuzz_loop({version!r}, 13, 3000)")
    # samples with frames came through the ring, and the loop parked for codes and for thread lists
    assert outcomes.get("loop_ok", 0) > 500 and outcomes.get("frames", 0) > 100, outcomes
    assert outcomes.get(f"parked_{native_walk.NEED_CODES}", 0) > 50, outcomes
    assert outcomes.get(f"parked_{native_walk.RELIST}", 0) > 50, outcomes
    assert outcomes["skipped"] > 0, outcomes  # 10 kHz into 8 slots: it filled, and said so
    assert outcomes.get("unread", 0) > 0, outcomes


_UNDER_SANITIZERS = """
import sys
from pathlib import Path
from perfd.cpython import native_walk
native_walk.LIBRARY, native_walk.SOURCE = Path(sys.argv[1]), Path(sys.argv[2])
native_walk._LIB, native_walk._WHY = native_walk._load()
assert native_walk._LIB is not None, native_walk._WHY
import test_stack_native as t
for version in ("3.11", "3.12", "3.13"):
    print(version, t.fuzz(version, 5, 600), flush=True)
    print(version, t.fuzz_loop(version, 5, 1500), flush=True)
"""


def test_native_walker_on_random_memory_under_sanitizers(tmp_path: Path) -> None:
    # The same fuzz with the walker built with AddressSanitizer and UBSan, any
    # finding fatal: an out-of-bounds read or write, a use after free or
    # undefined behaviour fails the test even where it would not crash.
    cc = native_walk.compiler()
    asan, ubsan = (subprocess.run([cc, f"-print-file-name=lib{n}san.so"], capture_output=True, text=True,
                                  check=True).stdout.strip() for n in ("a", "ub"))
    if not (os.path.isabs(asan) and os.path.isabs(ubsan)):
        pytest.fail(f"{cc} has no sanitizer runtimes ({asan}, {ubsan})")  # gcc ships them on Debian
    lib = tmp_path / "_walk.so"
    subprocess.run([cc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-fno-omit-frame-pointer", "-shared", "-fPIC", "-o", str(lib), str(native_walk.SOURCE)], check=True)
    env = {**os.environ, "LD_PRELOAD": f"{asan} {ubsan}", "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    out = subprocess.run([sys.executable, "-c", _UNDER_SANITIZERS, str(lib), str(native_walk.SOURCE)],
                         cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    assert "runtime error" not in out.stderr and "AddressSanitizer" not in out.stderr, out.stderr[-3000:]
    assert out.stdout.count("frames") == 6 and out.stdout.count("loop_ok") == 3, out.stdout
    assert out.stdout.count("unread") == 6, out.stdout  # the GIL-gated path ran under the sanitizers too


class _GilWorld:
    """Three threads with planted frame chains and a GIL, in perfd's own memory,
    whose holder, hand-over count and frames a test sets by hand."""

    SWITCHES_AT = 16  # the hand-over count's offset from the holder word

    def __init__(self, version: str) -> None:
        self.layout = L = generated_layout(version)
        self.buf = ctypes.create_string_buffer(1 << 16)
        self._next = ctypes.addressof(self.buf)
        self.interp = self._alloc(L.interp_threads_head + 8)
        self.gil = self._alloc(24)
        self.code = self._alloc(L.code_code_adaptive + 256)
        self.tstates = [self._alloc(L.tstate_size) for _ in range(3)]
        self.put(self.interp + L.interp_threads_head, self.tstates[0])
        for k, (t, nxt) in enumerate(zip(self.tstates, self.tstates[1:] + [0])):
            self.put(t + L.tstate_next, nxt)
            self.put(t + L.tstate_thread_id, 1000 + k)
            self.put(t + L.tstate_native_thread_id, 2000 + k)
        self.frames = {t: [self._alloc(96) for _ in range(3)] for t in self.tstates}
        for t, frames in self.frames.items():
            _plant_chain(self.put, L, t, [(f, self.code, 0, 0) for f in frames], self._alloc(16))
        self.nw = native_walk.NativeWalk.create(os.getpid(), L)
        assert self.nw is not None
        self.nw.set_gil(self.gil, self.SWITCHES_AT)
        self.nw.set_threads([self.interp], self.tstates)

    def _alloc(self, n: int) -> int:
        at, self._next = self._next, self._next + (n + 15) // 16 * 16
        assert self._next <= ctypes.addressof(self.buf) + len(self.buf)
        return at

    @staticmethod
    def put(addr: int, value: int, size: int = 8) -> None:
        ctypes.memmove(addr, value.to_bytes(size, "little"), size)

    def step(self, thread: int, depth: int, k: int) -> None:
        """The frame at ``depth`` of thread ``thread`` (0, 1, 2) is at instruction ``k``."""
        t = self.tstates[thread]
        self.put(self.frames[t][depth] + self.layout.frame_instr, self.code + self.layout.code_code_adaptive + 2 * k)

    def hand_over(self, holder: int, switches: int) -> None:
        self.put(self.gil, self.tstates[holder])
        self.put(self.gil + self.SWITCHES_AT, switches)

    def sample(self) -> dict[int, int | None]:
        """Each thread's innermost instruction as sent this sample (None: as last sample)."""
        nw = self.nw
        rc = nw.sample(False)
        if rc == native_walk.NEED_CODES:
            for addr, head in nw.needed_codes():
                nw.set_code(addr, head, 1, 0)
            rc = nw.decode(False)
        assert rc == native_walk.OK, (rc, nw.message)
        info, raw, _ = nw.result()
        out, pos = {}, 0
        for k in range(0, len(info), 6):
            tstate, _, _, flags, _n, new = info[k:k + 6]
            out[self.tstates.index(tstate)] = raw[pos + 2] if new and not flags & native_walk.SAME else None
            pos += 4 * new
        return out


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_the_gil_decides_which_threads_are_read(version: str) -> None:
    """The rule, step by step, on planted memory: a thread is left unread only
    when the GIL's holder and count say it cannot have run since its last sample."""
    w = _GilWorld(version)
    at = w.code + w.layout.code_code_adaptive
    w.hand_over(0, 10)
    w.sample()
    assert w.nw.unread == 0  # no earlier GIL reading to compare with
    w.sample()
    assert w.nw.unread == 2  # the GIL stayed with thread 0: 1 and 2 cannot have run
    w.step(1, 0, 5)  # memory that changes without its thread holding the GIL ...
    assert w.sample()[1] is None and w.nw.unread == 2  # ... is not read: the GIL says it did not run
    w.hand_over(1, 11)  # one hand-over, 0 -> 1: both may have run
    got = w.sample()
    assert w.nw.unread == 1 and got[1] == at + 10
    w.step(2, 0, 7)
    w.hand_over(2, 13)  # two hand-overs: anyone may have held it in between
    got = w.sample()
    assert w.nw.unread == 0 and got[2] == at + 14
    w.hand_over(2, 14)  # a count without a change of holder: read mid-write
    w.sample()
    assert w.nw.unread == 0
    w.hand_over(0, 14)  # a change of holder without a count: likewise
    w.sample()
    assert w.nw.unread == 0
    w.sample()
    assert w.nw.unread == 2
    w.nw.forget()  # after a torn sample nothing is trusted
    w.sample()
    assert w.nw.unread == 0
    w.nw.set_gil(0, 0)  # no GIL known: every thread, every sample
    w.sample()
    w.sample()
    assert w.nw.unread == 0
    w.nw.close()

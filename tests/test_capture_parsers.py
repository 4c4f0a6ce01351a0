"""Sans-IO parsers from byte fixtures: RFC 6455 frames and HTTP/1.1 messages.

Frames are encoded by the ``websockets`` library (an independent encoder), so
these tests check our parser against real wire bytes, not against itself.
No privileges needed.
"""

from __future__ import annotations

import random

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from perfd.capture.http import (
    HttpDesync,
    HttpParser,
    MessageEnd,
    RequestHead,
    ResponseHead,
    Role,
    Upgraded,
)
from perfd.capture.websocket import FrameParser, WsControl, WsDesync, WsMessage, WsSynced


def frame(opcode: Opcode, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=mask)


def ws_stream(mask: bool) -> tuple[bytes, list[int]]:
    """A server or client stream covering every length form, control frames,
    and a fragmented message with a ping between its fragments."""
    parts = [
        frame(Opcode.TEXT, b"hello", mask=mask),  # 7-bit length
        frame(Opcode.BINARY, bytes(range(256)) * 2, mask=mask),  # 16-bit length (512)
        frame(Opcode.PING, b"p", mask=mask),
        frame(Opcode.BINARY, b"\x00" * 70_000, mask=mask),  # 64-bit length
        frame(Opcode.TEXT, b"frag-1-", fin=False, mask=mask),
        frame(Opcode.PONG, b"", mask=mask),  # control frame between fragments
        frame(Opcode.CONT, b"frag-2-", fin=False, mask=mask),
        frame(Opcode.CONT, b"end", fin=True, mask=mask),
        frame(Opcode.BINARY, b"", mask=mask),  # empty message still counts
        frame(Opcode.CLOSE, b"\x03\xe8", mask=mask),
    ]
    return b"".join(parts), [5, 512, 70_000, 17, 0]


def messages(events: list) -> list[int]:
    return [e.size for e in events if isinstance(e, WsMessage)]


@pytest.mark.parametrize("mask", [False, True], ids=["server", "client"])
def test_ws_split_at_every_offset(mask: bool) -> None:
    stream, sizes = ws_stream(mask)
    # every split point inside the headers region and a stride through payloads
    offsets = list(range(0, 700)) + list(range(700, len(stream), 97)) + [len(stream) - 1, len(stream)]
    for cut in offsets:
        p = FrameParser(masked=mask)
        events = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert messages(events) == sizes, cut
        assert [e.opcode for e in events if isinstance(e, WsControl)] == [0x9, 0xA, 0x8]
        assert not any(isinstance(e, WsDesync) for e in events)


def test_ws_byte_at_a_time_and_fragment_counts() -> None:
    stream, sizes = ws_stream(False)
    p = FrameParser(masked=False)
    events = []
    for i in range(len(stream)):
        events += p.feed(stream[i : i + 1])
    assert messages(events) == sizes
    frag = [e for e in events if isinstance(e, WsMessage)][3]
    assert (frag.opcode, frag.frames, frag.size) == (0x1, 3, 17)


def test_ws_every_segmentation_of_small_frames() -> None:
    """Random segmentations (like TCP would produce) of many small frames."""
    rng = random.Random(7)
    sizes = [rng.choice([0, 1, 125, 126, 127, 65535, 65536]) for _ in range(60)]
    stream = b"".join(frame(Opcode.BINARY, b"x" * s) for s in sizes)
    for _ in range(40):
        p = FrameParser(masked=False)
        cuts = sorted(rng.sample(range(1, len(stream)), 25))
        events = []
        for a, b in zip([0, *cuts], [*cuts, len(stream)]):
            events += p.feed(memoryview(stream)[a:b])
        assert messages(events) == sizes


def test_ws_64bit_length_beyond_4gib() -> None:
    """A 2**32 + 5 byte frame: length arithmetic is not 32-bit, payload is skipped not buffered."""
    size = (1 << 32) + 5
    header = bytes([0x82, 127]) + size.to_bytes(8, "big")
    p = FrameParser(masked=False)
    chunk = memoryview(bytes(64 << 20))
    events = p.feed(header)
    left = size
    while left:
        take = min(left, len(chunk))
        events += p.feed(chunk[:take])
        left -= take
    events += p.feed(frame(Opcode.TEXT, b"after"))
    assert messages(events) == [size, 5]


def test_ws_permessage_deflate_flagged() -> None:
    compressed = PerMessageDeflate(False, False, 15, 15).encode(Frame(Opcode.TEXT, b"a" * 1000))
    assert compressed.rsv1
    data = Frame(Opcode.TEXT, b"a" * 1000).serialize(mask=False, extensions=[PerMessageDeflate(False, False, 15, 15)])
    p = FrameParser(masked=False, deflate=True)
    (msg,) = [e for e in p.feed(data) if isinstance(e, WsMessage)]
    assert msg.compressed and msg.size == len(compressed.data) < 1000
    # without negotiation RSV1 is a protocol violation: sync is lost, nothing raises
    strict = FrameParser(masked=False, deflate=False)
    assert [type(e) for e in strict.feed(data)] == [WsDesync]


def test_ws_wrong_mask_direction_is_desync() -> None:
    p = FrameParser(masked=False)
    assert isinstance(p.feed(frame(Opcode.TEXT, b"x", mask=True))[0], WsDesync)


def test_ws_garbage_never_raises_and_resyncs_at_segment_start() -> None:
    rng = random.Random(3)
    for _ in range(300):
        p = FrameParser(masked=False)
        for _ in range(5):
            p.feed(rng.randbytes(rng.randint(0, 300)))
    # garbage, then a clean run of segment-aligned frames: counting resumes
    p = FrameParser(masked=False)
    events = p.feed(frame(Opcode.TEXT, b"ok"))
    events += p.feed(b"\xff\xff\xff garbage")
    assert any(isinstance(e, WsDesync) for e in events)
    sizes = [10, 20, 30, 40, 50]
    for s in sizes:
        events += p.feed(frame(Opcode.BINARY, b"y" * s))
    assert messages(events) == [2, *sizes]
    assert any(isinstance(e, WsSynced) for e in events)
    assert p.synced


def test_ws_pickup_mid_stream() -> None:
    """Hunting parser: a segment starting mid-payload is skipped; the first
    message-aligned segment becomes a candidate, confirmed by later headers."""
    big = frame(Opcode.BINARY, b"z" * 5000)
    p = FrameParser(masked=False, deflate=None, synced=False)
    events = p.feed(big[1000:3000])  # middle of a payload: implausible header, or a candidate that fails
    events += p.feed(big[3000:])
    # a fragmented message whose start was missed is not counted
    events += p.feed(frame(Opcode.CONT, b"tail", fin=True))
    sizes = [7, 8, 9, 10]
    for s in sizes:
        events += p.feed(frame(Opcode.TEXT, b"t" * s))
    assert messages(events) == sizes
    assert p.synced


def test_ws_candidate_held_until_confirmed() -> None:
    p = FrameParser(masked=False, synced=False, confirm=2)
    assert p.feed(frame(Opcode.TEXT, b"a")) == []  # candidate: held
    assert p.feed(frame(Opcode.TEXT, b"bb")) == []  # one confirmation: still held
    events = p.feed(frame(Opcode.TEXT, b"ccc"))  # second confirmation: released, then its own
    assert messages(events) == [1, 2, 3]
    assert isinstance(events[2], WsSynced)
    assert messages(p.feed(frame(Opcode.TEXT, b"dddd"))) == [4]


# --- HTTP/1.1 ---------------------------------------------------------------

REQUESTS = (
    b"GET /api/v1/nodes?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /api/v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"a\": 123}\n"
    b"PUT /api/v1/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"\r\n"  # a stray empty line between messages is tolerated
    b"DELETE /api/v1/nodes/7 HTTP/1.1\r\nHost: x\r\n\r\n"
)


def _heads(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def test_http_pipelined_requests_split_at_every_offset() -> None:
    for cut in range(len(REQUESTS) + 1):
        p = HttpParser(Role.REQUEST)
        events = p.feed(REQUESTS[:cut], mark="a") + p.feed(REQUESTS[cut:], mark="b")
        heads = _heads(events, RequestHead)
        assert [(h.method, h.target) for h in heads] == [
            ("GET", "/api/v1/nodes?verbose=1"),
            ("POST", "/api/v1/nodes"),
            ("PUT", "/api/v1/upload"),
            ("DELETE", "/api/v1/nodes/7"),
        ], cut
        assert len(_heads(events, MessageEnd)) == 4
        assert not _heads(events, HttpDesync)


def test_http_marks_are_first_and_last_byte() -> None:
    req = b"POST /api/x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
    p = HttpParser(Role.REQUEST)
    events = p.feed(req[:10], mark=1.0) + p.feed(req[10:-2], mark=2.0) + p.feed(req[-2:], mark=3.0)
    assert events[0].begin_mark == 1.0 and events[-1] == MessageEnd(3.0)


RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1a\r\n" + b"c" * 26 + b"\r\n10\r\n" + b"d" * 16 + b"\r\n0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"  # answer to HEAD: no body
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
)
RESPONSE_METHODS = ["GET", "GET", "HEAD", "DELETE", "POST", "GET", "GET"]


def test_http_responses_chunked_head_204_304_100_at_every_offset() -> None:
    for cut in range(len(RESPONSES) + 1):
        p = HttpParser(Role.RESPONSE)
        for m in RESPONSE_METHODS:
            p.expect(m)
        events = p.feed(RESPONSES[:cut]) + p.feed(RESPONSES[cut:])
        assert [h.status for h in _heads(events, ResponseHead)] == [200, 200, 200, 204, 100, 201, 304, 404], cut
        assert [h.request_method for h in _heads(events, ResponseHead)] == [
            "GET", "GET", "HEAD", "DELETE", "POST", "POST", "GET", "GET"]
        assert len(_heads(events, MessageEnd)) == 7
        assert not _heads(events, HttpDesync)


def test_http_close_delimited_response() -> None:
    p = HttpParser(Role.RESPONSE)
    p.expect("GET")
    events = p.feed(b"HTTP/1.0 200 OK\r\n\r\nstreamed until close", mark=1)
    assert not _heads(events, MessageEnd)
    assert p.close(mark=2) == [MessageEnd(2)]


def test_http_upgrade_hands_over_the_rest() -> None:
    ws = frame(Opcode.TEXT, b"first")
    data = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: x\r\n\r\n") + ws
    for cut in range(len(data) + 1):
        p = HttpParser(Role.RESPONSE)
        p.expect("GET", "websocket")
        events = p.feed(data[:cut])
        rest = b""
        up = _heads(events, Upgraded)
        if up:
            rest = bytes(up[0].rest) + data[cut:]
        else:
            events += p.feed(data[cut:])
            rest = bytes(_heads(events, Upgraded)[0].rest)
        assert _heads(events, ResponseHead)[0].status == 101
        assert rest == ws, cut
        assert p.switched


def test_http_garbage_never_raises_and_resyncs() -> None:
    rng = random.Random(11)
    for role in Role:
        for _ in range(300):
            p = HttpParser(role)
            p.expect("GET")
            for _ in range(4):
                p.feed(rng.randbytes(rng.randint(0, 200)))
    p = HttpParser(Role.REQUEST)
    events = p.feed(b"GET /a HTTP/1.1\r\nbad header line\r\n\r\n")
    assert _heads(events, HttpDesync)
    events = p.feed(b"\x00\x01 binary junk")  # not a start line: ignored while hunting
    assert events == []
    events = p.feed(b"GET /api/ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [h.target for h in _heads(events, RequestHead)] == ["/api/ok"]


def test_http_bad_content_length_and_chunk_size_desync() -> None:
    p = HttpParser(Role.REQUEST)
    assert _heads(p.feed(b"POST /x HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"), HttpDesync)
    p = HttpParser(Role.RESPONSE)
    assert _heads(p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), HttpDesync)


def test_http_pickup_waits_for_a_start_line() -> None:
    p = HttpParser(Role.RESPONSE, synced=False)
    assert p.feed(b"tail of an earlier body\r\n\r\n") == []
    events = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert [h.status for h in _heads(events, ResponseHead)] == [200]


def _deflate_stream(messages: list[bytes], no_context_takeover: bool) -> bytes:
    ext = PerMessageDeflate(False, no_context_takeover, 15, 15)
    return b"".join(Frame(Opcode.BINARY, m).serialize(mask=False, extensions=[ext]) for m in messages)


def test_ws_permessage_deflate_sizes_are_inflated_with_context_takeover() -> None:
    """With deflate negotiated the app's payload size is what counts: inflate, across split points."""
    rng = random.Random(9)
    msgs = [rng.randbytes(3000) + b"\x00" * rng.randint(0, 50_000) for _ in range(8)] + [b"", b"x" * 3_000_000]
    for no_ctx in (False, True):
        data = _deflate_stream(msgs, no_ctx)
        assert len(data) < sum(map(len, msgs)) / 2
        for cut in (1, 2, 7, len(data) // 3, len(data) - 1):
            p = FrameParser(masked=False, deflate=True, inflate=True, no_context_takeover=no_ctx)
            events = [e for e in p.feed(data[:cut]) + p.feed(data[cut:]) if isinstance(e, WsMessage)]
            assert [e.size for e in events] == [len(m) for m in msgs]
            assert all(e.inflated and e.compressed and e.wire_size < e.size + 10 for e in events)
            assert p.inflate_errors == 0


def test_ws_inflate_without_history_falls_back_to_wire_size() -> None:
    msgs = [b"abc" * 1000] * 3
    data = _deflate_stream(msgs, False)
    first = len(_deflate_stream(msgs[:1], False))
    p = FrameParser(masked=False, deflate=True, inflate=True)
    events = [e for e in p.feed(data[first:]) if isinstance(e, WsMessage)]  # context of message 1 missing
    assert len(events) == 2 and p.inflate_errors == 1
    assert not events[0].inflated and events[0].size == events[0].wire_size


def test_ws_hunting_never_syncs_on_zero_payload() -> None:
    """Zero bytes read as empty continuation frames: a hunting parser must not take them for a stream."""
    big = frame(Opcode.BINARY, bytes(200_000))
    p = FrameParser(masked=False, deflate=None, synced=False)
    events = []
    for i in range(1000, len(big), 9000):  # segments starting inside the zero payload
        events += p.feed(big[i : i + 9000])
    assert not p.synced and p.frames <= len(range(1000, len(big), 9000))
    sizes = [3, 4, 5]
    for s in sizes:
        events += p.feed(frame(Opcode.BINARY, bytes(s)))
    assert messages(events) == sizes

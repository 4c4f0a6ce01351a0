"""HTTP/1.1 message parser for one direction of one connection (sans-IO).

Fed the in-order bytes of the client→server (``REQUEST``) or server→client
(``RESPONSE``) stream, it emits heads, message ends and upgrades. It handles
keep-alive and pipelining (messages back to back in one chunk), Content-Length
and chunked bodies, close-delimited responses, HEAD/1xx/204/304 responses
without bodies, and ``101 Switching Protocols``. Bodies are skipped, never
copied; only heads and chunk-size lines are buffered (bounded).

Every event carries the opaque ``mark`` given to the ``feed`` call in which it
happened, and a head carries the mark of the feed that held the message's
first byte: the caller passes a capture timestamp and gets "first byte" and
"last byte" times without the parser knowing about time.

Sync. A parser that starts mid-stream, or meets bytes that are not HTTP,
drops its state and *hunts*: at the start of each later ``feed`` call (a TCP
segment start) it looks for a plausible start line and resumes there. Nothing
raises out of ``feed``.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 1024

_REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]{0,19}) ([^ \r\n]+) HTTP/(1\.[01])")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([1-5][0-9][0-9])(?: ([^\r\n]*))?")
_REQUEST_START = re.compile(rb"[A-Z][A-Z_-]{0,19}(?: |$)")
_RESPONSE_START = re.compile(rb"H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01](?: |$)|$)|$)|$)|$)|$)|$)|$)")


class Role(Enum):
    REQUEST = auto()  # client→server
    RESPONSE = auto()  # server→client


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    begin_mark: Any

    def header(self, name: str) -> str | None:
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    version: str
    headers: tuple[tuple[str, str], ...]
    begin_mark: Any
    request_method: str | None  # the method this response answers, when known

    def header(self, name: str) -> str | None:
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """The last byte of a request or response (``mark`` of that feed)."""

    mark: Any


@dataclass(frozen=True, slots=True)
class Upgraded:
    """``101 Switching Protocols`` ended HTTP on this connection; ``rest`` is
    what followed the head in the same chunk (belongs to the new protocol)."""

    protocol: str
    rest: bytes | memoryview


@dataclass(frozen=True, slots=True)
class HttpDesync:
    reason: str


HttpEvent = RequestHead | ResponseHead | MessageEnd | Upgraded | HttpDesync


class _State(Enum):
    HEAD = auto()
    BODY = auto()  # Content-Length remaining
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_CRLF = auto()
    TRAILERS = auto()
    UNTIL_CLOSE = auto()
    SWITCHED = auto()  # upgraded or tunnel: not HTTP any more
    HUNTING = auto()


class HttpParser:
    """One direction of an HTTP/1.1 connection."""

    def __init__(self, role: Role, *, synced: bool = True) -> None:
        self.role = role
        self._state = _State.HEAD if synced else _State.HUNTING
        self._buf = bytearray()
        self._remaining = 0
        self._begin_mark: Any = None
        self._methods: deque[str] = deque()  # RESPONSE role: methods of requests awaiting answers
        self._upgrade_requested: deque[str | None] = deque()
        self.messages = 0
        self.desyncs = 0

    @property
    def switched(self) -> bool:
        return self._state is _State.SWITCHED

    @property
    def hunting(self) -> bool:
        return self._state is _State.HUNTING

    def expect(self, method: str, upgrade: str | None = None) -> None:
        """RESPONSE role: a request was sent; its method decides the response's framing."""
        self._methods.append(method)
        self._upgrade_requested.append(upgrade)

    def feed(self, data: bytes | bytearray | memoryview, mark: Any = None) -> list[HttpEvent]:
        out: list[HttpEvent] = []
        n = len(data)
        pos = 0
        if self._state is _State.HUNTING and n:
            if self._plausible_start(data):
                self._state = _State.HEAD
                self._buf.clear()
            else:
                return out
        while pos < n:
            state = self._state
            if state is _State.HEAD:
                pos = self._feed_head(data, pos, mark, out)
            elif state is _State.BODY or state is _State.CHUNK_DATA:
                take = min(self._remaining, n - pos)
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    if state is _State.BODY:
                        self._end_message(mark, out)
                    else:
                        self._state = _State.CHUNK_CRLF
                        self._buf.clear()
            elif state is _State.CHUNK_SIZE or state is _State.CHUNK_CRLF or state is _State.TRAILERS:
                pos = self._feed_line(data, pos, mark, out)
            elif state is _State.UNTIL_CLOSE or state is _State.SWITCHED:
                return out
            else:  # HUNTING after a desync inside this chunk
                return out
        return out

    def close(self, mark: Any = None) -> list[HttpEvent]:
        """The stream ended (FIN): a close-delimited response ends here."""
        out: list[HttpEvent] = []
        if self._state is _State.UNTIL_CLOSE:
            self._end_message(mark, out)
        self._state = _State.SWITCHED
        return out

    def lose_sync(self, reason: str = "gap in stream") -> list[HttpEvent]:
        """Bytes were lost: drop state and hunt for the next message start."""
        out: list[HttpEvent] = []
        self._desync(reason, out)
        return out

    # --- internals ---------------------------------------------------------

    def _plausible_start(self, data: bytes | bytearray | memoryview) -> bool:
        """Does this chunk begin with a start line (a whole one, or a prefix of one)?"""
        head = bytes(data[:256])
        line_end = head.find(b"\r\n")
        if self.role is Role.REQUEST:
            full, prefix = _REQUEST_LINE, _REQUEST_START
        else:
            full, prefix = _STATUS_LINE, _RESPONSE_START
        if line_end >= 0:
            return bool(full.fullmatch(head[:line_end]))
        return bool(prefix.match(head))

    def _desync(self, reason: str, out: list[HttpEvent]) -> None:
        if self._state is not _State.HUNTING:
            self.desyncs += 1
            out.append(HttpDesync(reason))
        self._state = _State.HUNTING
        self._buf.clear()
        self._remaining = 0
        self._methods.clear()
        self._upgrade_requested.clear()

    def _feed_head(self, data: bytes | bytearray | memoryview, pos: int, mark: Any, out: list[HttpEvent]) -> int:
        n = len(data)
        if not self._buf:
            while pos < n and data[pos] in (0x0D, 0x0A):  # tolerated empty lines between messages
                pos += 1
            if pos >= n:
                return pos
            self._begin_mark = mark
        start = max(0, len(self._buf) - 3)
        self._buf += data[pos:n]
        end = self._buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._desync("head too large", out)
                return n
            return n
        head_len = end + 4
        consumed = head_len - (len(self._buf) - (n - pos))
        head = bytes(self._buf[:end])
        self._buf.clear()
        pos += consumed
        self._parse_head(head, mark, out)
        if self._state is _State.SWITCHED and out and isinstance(out[-1], Upgraded):
            out[-1] = Upgraded(out[-1].protocol, data[pos:n])
            return n
        return pos

    def _parse_head(self, head: bytes, mark: Any, out: list[HttpEvent]) -> None:
        lines = head.split(b"\r\n")
        start = lines[0]
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b" " in name:
                self._desync("malformed header line", out)
                return
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        hdrs = tuple(headers)
        if self.role is Role.REQUEST:
            m = _REQUEST_LINE.fullmatch(start)
            if not m:
                self._desync("not a request line", out)
                return
            method = m.group(1).decode()
            out.append(RequestHead(method, m.group(2).decode("latin-1"), m.group(3).decode(), hdrs, self._begin_mark))
            self._start_body(hdrs, mark, out, no_body=False)
            return
        m = _STATUS_LINE.fullmatch(start)
        if not m:
            self._desync("not a status line", out)
            return
        status = int(m.group(2))
        informational = 100 <= status < 200
        method = self._methods[0] if self._methods else None
        upgrade = self._upgrade_requested[0] if self._upgrade_requested else None
        if not informational or status == 101:
            if self._methods:
                self._methods.popleft()
                self._upgrade_requested.popleft()
        out.append(ResponseHead(status, (m.group(3) or b"").decode("latin-1"), m.group(1).decode(), hdrs,
                                self._begin_mark, method))
        if status == 101:
            self.messages += 1
            out.append(MessageEnd(mark))
            self._state = _State.SWITCHED
            out.append(Upgraded((_header(hdrs, "upgrade") or upgrade or "").lower(), b""))
            return
        if informational:
            self._state = _State.HEAD  # the real response follows
            return
        if method == "CONNECT" and 200 <= status < 300:
            self.messages += 1
            out.append(MessageEnd(mark))
            self._state = _State.SWITCHED
            return
        no_body = method == "HEAD" or status in (204, 304)
        self._start_body(hdrs, mark, out, no_body=no_body)

    def _start_body(self, hdrs: tuple[tuple[str, str], ...], mark: Any, out: list[HttpEvent], *, no_body: bool) -> None:
        if no_body:
            self._end_message(mark, out)
            return
        te = _header(hdrs, "transfer-encoding")
        if te is not None and te.lower().rsplit(",", 1)[-1].strip() == "chunked":
            self._state = _State.CHUNK_SIZE
            self._buf.clear()
            return
        cl = _header(hdrs, "content-length")
        if cl is not None:
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                self._desync("bad Content-Length", out)
                return
            self._remaining = int(values.pop())
            if self._remaining == 0:
                self._end_message(mark, out)
            else:
                self._state = _State.BODY
            return
        if self.role is Role.REQUEST:
            self._end_message(mark, out)  # a request without framing has no body
        else:
            self._state = _State.UNTIL_CLOSE

    def _feed_line(self, data: bytes | bytearray | memoryview, pos: int, mark: Any, out: list[HttpEvent]) -> int:
        n = len(data)
        nl = bytes(data[pos : min(n, pos + MAX_CHUNK_LINE)]).find(b"\n")
        if nl < 0:
            self._buf += data[pos : min(n, pos + MAX_CHUNK_LINE)]
            if len(self._buf) > MAX_CHUNK_LINE or n - pos > MAX_CHUNK_LINE:
                self._desync("chunk line too long", out)
                return n
            return n
        self._buf += data[pos : pos + nl + 1]
        pos += nl + 1
        line = bytes(self._buf).rstrip(b"\r\n")
        self._buf.clear()
        state = self._state
        if state is _State.CHUNK_CRLF:
            if line:
                self._desync("missing CRLF after chunk", out)
                return n
            self._state = _State.CHUNK_SIZE
        elif state is _State.CHUNK_SIZE:
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                self._desync("bad chunk size", out)
                return n
            if size == 0:
                self._state = _State.TRAILERS
            else:
                self._remaining = size
                self._state = _State.CHUNK_DATA
        else:  # TRAILERS: until an empty line
            if not line:
                self._end_message(mark, out)
        return pos

    def _end_message(self, mark: Any, out: list[HttpEvent]) -> None:
        self.messages += 1
        out.append(MessageEnd(mark))
        self._state = _State.HEAD
        self._buf.clear()


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    values = [v for k, v in headers if k == name]
    return ", ".join(values) if values else None

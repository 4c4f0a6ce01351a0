"""The binary point frame each node topic carries.

20-byte little-endian header — magic ``b"LPC1"``, uint32 frame id, float64
capture timestamp (epoch s), uint32 point count — then N×3 float32 xyz.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"LPC1"
HEADER = struct.Struct("<4sIdI")
assert HEADER.size == 20


class FrameError(ValueError):
    """Bytes that are not a point frame."""


@dataclass(frozen=True)
class FrameHeader:
    frame_id: int
    timestamp: float
    count: int


def encode(points: np.ndarray, frame_id: int, timestamp: float) -> bytes:
    xyz = np.ascontiguousarray(points, dtype="<f4")
    return HEADER.pack(MAGIC, frame_id & 0xFFFFFFFF, timestamp, len(xyz)) + xyz.tobytes()


def decode_header(data: bytes) -> FrameHeader:
    if len(data) < HEADER.size:
        raise FrameError(f"frame shorter than its {HEADER.size}-byte header: {len(data)} bytes")
    magic, frame_id, timestamp, count = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if len(data) != HEADER.size + count * 12:
        raise FrameError(f"header says {count} points but body is {len(data) - HEADER.size} bytes")
    return FrameHeader(frame_id, timestamp, count)


def decode(data: bytes) -> tuple[FrameHeader, np.ndarray]:
    header = decode_header(data)
    return header, np.frombuffer(data, dtype="<f4", offset=HEADER.size).reshape(header.count, 3)

"""The frames of ``kubectl gpudock exec -i/-t`` (docs/day2.md): what the plugin and
the agent send each other inside one WebSocket, one frame per binary message.

A frame is one type byte, then its payload (the WebSocket message gives the length):

==========  ====  =====================  =================================================
type        byte  sent by                payload
==========  ====  =====================  =================================================
STDIN       0     the plugin             bytes for the process's stdin; empty: stdin closed
STDOUT      1     the agent              the process's output (all of it under a TTY)
STDERR      2     the agent              the process's stderr (no TTY); the agent's notices
RESIZE      3     the plugin             rows, columns: two unsigned 16-bit big-endian
EXIT        4     the agent, last        the exit code: a signed 32-bit big-endian
==========  ====  =====================  =================================================
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from gpudock.errors import TransientError

_SIZE = struct.Struct(">HH")
_CODE = struct.Struct(">i")
MAX_PAYLOAD = 1 << 20  # what either side sends in one frame at most


class FrameType(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    RESIZE = 3
    EXIT = 4


class FrameError(TransientError):
    """Bytes that are no frame (an unknown type, a payload of the wrong size): the
    stream is broken, as migration_wire's WireError says of its own."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes = b""


def encode(kind: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"a frame carries at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    return bytes((kind,)) + payload


def decode(message: bytes) -> Frame:
    if not message:
        raise FrameError("an empty message is no frame")
    try:
        kind = FrameType(message[0])
    except ValueError:
        raise FrameError(f"unknown frame type {message[0]}") from None
    frame = Frame(kind, bytes(message[1:]))
    if kind == FrameType.RESIZE and len(frame.payload) != _SIZE.size:
        raise FrameError(f"a resize frame carries {_SIZE.size} bytes")
    if kind == FrameType.EXIT and len(frame.payload) != _CODE.size:
        raise FrameError(f"an exit frame carries {_CODE.size} bytes")
    return frame


def resize(rows: int, columns: int) -> bytes:
    """A resize frame; sizes beyond 16 bits are clipped (no terminal is that large)."""
    return encode(FrameType.RESIZE, _SIZE.pack(max(0, min(rows, 0xFFFF)),
                                               max(0, min(columns, 0xFFFF))))


def size_of(frame: Frame) -> tuple[int, int]:
    """(rows, columns) of a resize frame."""
    rows, columns = _SIZE.unpack(frame.payload)
    return int(rows), int(columns)


def exit_frame(code: int) -> bytes:
    return encode(FrameType.EXIT, _CODE.pack(code))


def code_of(frame: Frame) -> int:
    return int(_CODE.unpack(frame.payload)[0])

"""The frame codec of the DevPod.Pro workspace command protocol.

Every websocket message is one frame: a type byte, then the payload. This
module encodes and decodes frames and the zig-zag varint that carries exit
codes. It does no I/O, so both the client channel and the emulator use it,
and tests drive it by feeding bytes.

See ``shared/PROTOCOL.md`` for the contract this implements.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ProtocolViolation

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_PAYLOAD_SIZE",
    "RECEIVE_LIMIT",
    "Frame",
    "FrameType",
    "Ignored",
    "chunk_frames",
    "decode",
    "decode_varint",
    "encode",
    "encode_exit_code",
    "encode_varint",
]


class FrameType(enum.IntEnum):
    """The type byte that opens every message."""

    STDOUT = 0
    STDOUT_CLOSE = 1
    STDERR = 2
    STDERR_CLOSE = 3
    STDIN = 4
    STDIN_CLOSE = 5
    EXIT_CODE = 6


# The platform's limit for one message, type byte included (PROTOCOL.md).
MAX_MESSAGE_SIZE = 32768
MAX_PAYLOAD_SIZE = MAX_MESSAGE_SIZE - 1

# What we accept from a peer: larger than we send, as PROTOCOL.md asks, but
# bounded so that a broken peer cannot make us buffer without limit.
RECEIVE_LIMIT = 1024 * 1024

# Go's binary.MaxVarintLen64: no 64-bit value needs more groups than this.
_MAX_VARINT_BYTES = 10

# Lookup table so that decoding a type byte allocates nothing on the hot path.
_TYPES: dict[int, FrameType] = {t.value: t for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded message: its type and its payload (a view, not a copy)."""

    type: FrameType
    payload: memoryview

    @property
    def exit_code(self) -> int:
        """Decode the payload of an exit-code frame."""
        return decode_varint(self.payload)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message that carries nothing we understand; skip it, do not fail."""

    reason: str


def encode_varint(value: int) -> bytes:
    """Encode a signed integer as Go's ``binary.AppendVarint`` does."""
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"{value} does not fit in a signed 64-bit varint")
    # Zig-zag maps small magnitudes of either sign to small unsigned values.
    unsigned = (value << 1) ^ (value >> 63)
    unsigned &= (1 << 64) - 1
    out = bytearray()
    while unsigned >= 0x80:
        out.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    out.append(unsigned)
    return bytes(out)


def decode_varint(data: bytes | memoryview) -> int:
    """Decode a zig-zag varint that fills ``data`` exactly.

    Raises:
        ProtocolViolation: the bytes are empty, truncated, overlong or
            followed by trailing bytes.
    """
    unsigned = 0
    shift = 0
    for index, byte in enumerate(data):
        if index >= _MAX_VARINT_BYTES:
            break
        unsigned |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if index != len(data) - 1:
                raise ProtocolViolation("exit code frame has trailing bytes")
            if unsigned >= 1 << 64:
                break
            return (unsigned >> 1) ^ -(unsigned & 1)
        shift += 7
    if not data:
        raise ProtocolViolation("exit code frame is empty")
    raise ProtocolViolation(f"exit code varint is malformed: {bytes(data)[:12]!r}")


def encode(frame_type: FrameType, payload: bytes = b"") -> bytes:
    """Encode one frame; the caller keeps payloads within the message size."""
    return bytes((frame_type,)) + payload


def encode_exit_code(code: int) -> bytes:
    """Encode the frame that ends a command with ``code``."""
    return encode(FrameType.EXIT_CODE, encode_varint(code))


def chunk_frames(
    frame_type: FrameType, data: bytes | memoryview
) -> Iterator[bytes]:
    """Split ``data`` into frames of at most ``MAX_MESSAGE_SIZE`` bytes."""
    view = memoryview(data)
    for start in range(0, len(view), MAX_PAYLOAD_SIZE):
        yield encode(frame_type, view[start : start + MAX_PAYLOAD_SIZE].tobytes())


def decode(message: bytes | bytearray | memoryview | str) -> Frame | Ignored:
    """Decode one websocket message.

    Empty messages, text messages and unknown type bytes come back as
    ``Ignored`` rather than raising: PROTOCOL.md says they must not end a
    session. An exit-code payload is checked only when it is read.
    """
    if isinstance(message, str):
        return Ignored(f"text message of {len(message)} characters")
    if not message:
        return Ignored("empty message")
    frame_type = _TYPES.get(message[0])
    if frame_type is None:
        return Ignored(f"unknown frame type {message[0]}")
    return Frame(frame_type, memoryview(message)[1:])

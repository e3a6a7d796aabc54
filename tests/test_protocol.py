"""The frame codec: encoding, decoding, varints and chunking."""

from __future__ import annotations

import random

import pytest

from wsbridge import protocol
from wsbridge.errors import ProtocolViolation
from wsbridge.protocol import FrameType, Ignored

# The table of PROTOCOL.md, "Frames".
VARINT_TABLE = [
    (0, "00"),
    (1, "02"),
    (2, "04"),
    (-1, "01"),
    (64, "8001"),
    (255, "fe03"),
]


@pytest.mark.parametrize(("code", "wire"), VARINT_TABLE)
def test_varint_matches_protocol_table(code: int, wire: str) -> None:
    """Exit codes encode and decode exactly as PROTOCOL.md lists them."""
    assert protocol.encode_varint(code).hex() == wire
    assert protocol.decode_varint(bytes.fromhex(wire)) == code


@pytest.mark.parametrize(
    "code", [3, 127, 128, -2, -64, -65, 300, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
)
def test_varint_round_trips_edges(code: int) -> None:
    """Negative codes, codes above 127 and the 64-bit limits survive."""
    assert protocol.decode_varint(protocol.encode_varint(code)) == code


def test_varint_round_trips_random_values() -> None:
    """Random signed 64-bit values round-trip."""
    rng = random.Random(7)
    for _ in range(2000):
        value = rng.randint(-(2**63), 2**63 - 1)
        assert protocol.decode_varint(protocol.encode_varint(value)) == value


def test_varint_out_of_range_is_refused() -> None:
    """Values beyond 64 bits cannot be encoded."""
    with pytest.raises(ValueError):
        protocol.encode_varint(2**63)


@pytest.mark.parametrize(
    "wire",
    ["", "80", "8080", "0000", "ffffffffffffffffffff01", "ffffffffffffffffff7f"],
)
def test_malformed_varints_raise_protocol_violation(wire: str) -> None:
    """Empty, truncated, trailing and overlong varints are protocol errors."""
    with pytest.raises(ProtocolViolation):
        protocol.decode_varint(bytes.fromhex(wire))


def test_exit_code_frame_round_trips() -> None:
    """An exit-code frame decodes to its code."""
    frame = protocol.decode(protocol.encode_exit_code(255))
    assert not isinstance(frame, Ignored)
    assert frame.type is FrameType.EXIT_CODE
    assert frame.exit_code == 255


@pytest.mark.parametrize("frame_type", list(FrameType))
def test_every_frame_type_round_trips(frame_type: FrameType) -> None:
    """Each frame type keeps its type byte and payload."""
    payload = bytes(range(256)) * 3
    frame = protocol.decode(protocol.encode(frame_type, payload))
    assert not isinstance(frame, Ignored)
    assert frame.type is frame_type
    assert bytes(frame.payload) == payload


@pytest.mark.parametrize("message", [b"", b"\x07", b"\xff payload", "text message"])
def test_unknown_and_empty_messages_are_ignorable(message: bytes | str) -> None:
    """Empty, unknown-type and text messages are reported, not raised."""
    assert isinstance(protocol.decode(message), Ignored)


@pytest.mark.parametrize(
    "size", [0, 1, protocol.MAX_PAYLOAD_SIZE, protocol.MAX_PAYLOAD_SIZE + 1, 100_000]
)
def test_chunking_respects_message_limit(size: int) -> None:
    """Chunks are at most 32768 bytes and reassemble to the input."""
    data = random.Random(size).randbytes(size)
    messages = list(protocol.chunk_frames(FrameType.STDIN, data))
    assert all(len(m) <= protocol.MAX_MESSAGE_SIZE for m in messages)
    assert all(m[0] == FrameType.STDIN for m in messages)
    assert b"".join(m[1:] for m in messages) == data
    assert len(messages) == -(-size // protocol.MAX_PAYLOAD_SIZE)

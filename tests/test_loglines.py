"""Log-line reassembly across frames and log-record parsing."""

from __future__ import annotations

import json

import pytest

from wsbridge.loglines import MAX_LINE, LineAssembler, parse_line

RECORD = {"time": "2026-12-03T15:41:56Z", "message": "Creating…", "level": "info"}


def feed_all(chunks: list[bytes]) -> list[str]:
    """Feed ``chunks`` in order and return every line, the last included."""
    assembler = LineAssembler()
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(assembler.feed(chunk))
    return lines + assembler.finish()


def test_line_split_over_three_frames_comes_out_whole() -> None:
    """One JSON line cut into three frames is one line."""
    data = (json.dumps(RECORD, ensure_ascii=False) + "\n").encode()
    third = len(data) // 3
    lines = feed_all([data[:third], data[third : 2 * third], data[2 * third :]])
    assert [json.loads(line) for line in lines] == [RECORD]


def test_two_lines_in_one_frame_come_out_separately() -> None:
    """A frame with two lines gives two lines."""
    assert feed_all([b"first\nsecond\n"]) == ["first", "second"]


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_multibyte_character_split_between_frames_is_whole(cut: int) -> None:
    """A four-byte character cut anywhere decodes once, intact."""
    data = "a🚀b\n".encode()
    assert feed_all([data[: cut + 1], data[cut + 1 :]]) == ["a🚀b"]


def test_last_line_without_newline_is_kept() -> None:
    """Output that does not end in a newline is not lost."""
    assert feed_all([b"one\ntw", b"o"]) == ["one", "two"]


def test_crlf_line_endings_are_trimmed() -> None:
    """Windows line endings do not leave a carriage return behind."""
    assert feed_all([b"one\r\ntwo\r\n"]) == ["one", "two"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    """A bad byte becomes U+FFFD and the rest still arrives."""
    assert feed_all([b"ok \xff here\n"]) == ["ok \ufffd here"]


def test_json_log_line_parses_to_a_record() -> None:
    """Message, level, time and extra fields are read."""
    record = parse_line(json.dumps({**RECORD, "step": 2}))
    assert record is not None
    assert (record.message, record.level, record.time) == (
        "Creating…",
        "info",
        RECORD["time"],
    )
    assert record.fields == {"step": 2}


def test_line_without_level_is_a_panic() -> None:
    """A missing level means panic, as PROTOCOL.md says."""
    record = parse_line('{"message": "boom"}')
    assert record is not None and record.level == "panic"


@pytest.mark.parametrize(
    "line",
    [
        "plain text output",
        "{not json",
        '{"id":"demo","context":"default","provider":"x","state":"Running"}',
        '["message"]',
        '{"message": 3}',
    ],
)
def test_non_log_lines_are_output_in_their_own_right(line: str) -> None:
    """Plain text, broken JSON and objects without a message are not records."""
    assert parse_line(line) is None


def test_raw_lines_are_the_bytes_received() -> None:
    """Raw lines keep invalid UTF-8 and carriage returns exactly."""
    assembler = LineAssembler()
    raw = assembler.feed_raw(b"bad \xff\r\nnext")
    assert raw + assembler.finish_raw() == [b"bad \xff\r", b"next"]


def test_endless_line_is_cut_rather_than_buffered_forever() -> None:
    """A line longer than MAX_LINE comes out in pieces; memory stays bounded."""
    assembler = LineAssembler()
    pieces: list[bytes] = []
    for _ in range(3):
        pieces += assembler.feed_raw(b"x" * (MAX_LINE // 2 + 1))
    assert pieces and all(len(piece) <= 2 * MAX_LINE for piece in pieces)
    assert b"".join(pieces + assembler.finish_raw()) == b"x" * (3 * (MAX_LINE // 2 + 1))

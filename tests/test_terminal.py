"""The local terminal side of ``wsbridge shell``.

The escape filter is fed keystrokes as bytes; raw mode and the size are
checked on a real pseudo-terminal pair.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from collections.abc import Iterator

import pytest

from wsbridge.bridges.terminal import (
    ESCAPE_HELP,
    EscapeFilter,
    Filtered,
    raw_terminal,
    terminal_size,
)


def feed_all(*chunks: bytes) -> list[Filtered]:
    """Feed ``chunks`` to one fresh filter and return what each became."""
    escape_filter = EscapeFilter()
    return [escape_filter.feed(chunk) for chunk in chunks]


@pytest.mark.parametrize("enter", [b"\r", b"\n"])
def test_tilde_dot_after_enter_disconnects(enter: bytes) -> None:
    """``~.`` right after Enter (CR or LF) disconnects; the line is still sent."""
    (result,) = feed_all(b"ls" + enter + b"~.")
    assert result == Filtered(b"ls" + enter, disconnect=True)


def test_tilde_dot_as_the_first_keystrokes_disconnects() -> None:
    """The start of the session counts as the start of a line."""
    (result,) = feed_all(b"~.")
    assert result == Filtered(b"", disconnect=True)


def test_tilde_dot_mid_line_is_sent_as_typed() -> None:
    """``~.`` after other characters on the line is plain text."""
    assert feed_all(b"cd ~.", b"/x~.") == [Filtered(b"cd ~."), Filtered(b"/x~.")]


def test_tilde_dot_after_a_chunk_ending_mid_line_is_sent_as_typed() -> None:
    """A chunk boundary does not start a new line."""
    assert feed_all(b"echo ", b"~.") == [Filtered(b"echo "), Filtered(b"~.")]


def test_double_tilde_sends_one_tilde() -> None:
    """``~~`` at a line start sends a single ``~`` and starts no escape."""
    assert feed_all(b"\r~~.") == [Filtered(b"\r~.")]


def test_tilde_question_mark_echoes_help_and_sends_nothing() -> None:
    """``~?`` prints the escape list locally; the server sees neither byte."""
    (result,) = feed_all(b"\r~?")
    assert result == Filtered(b"\r", echo=ESCAPE_HELP)
    assert b"~." in result.echo


def test_tilde_dot_right_after_help_disconnects() -> None:
    """After the help text, a new escape may follow at once, as in ssh."""
    assert feed_all(b"~?", b"~.")[1] == Filtered(b"", disconnect=True)


def test_tilde_split_from_dot_across_chunks_disconnects() -> None:
    """A ``~`` ending one read and a ``.`` starting the next still disconnect."""
    first, second = feed_all(b"pwd\r~", b".")
    assert first == Filtered(b"pwd\r")
    assert second == Filtered(b"", disconnect=True)


def test_enter_split_from_tilde_dot_across_chunks_disconnects() -> None:
    """Enter in one read and ``~.`` in the next disconnect."""
    assert feed_all(b"pwd\n", b"~.")[1] == Filtered(b"", disconnect=True)


def test_tilde_before_another_key_sends_both() -> None:
    """``~`` at a line start followed by a non-escape key sends both bytes."""
    first, second = feed_all(b"\r~", b"/tmp")
    assert first == Filtered(b"\r")
    assert second == Filtered(b"~/tmp")


def test_tilde_before_enter_sends_both_and_allows_a_new_escape() -> None:
    """``~`` then Enter is sent as typed, and the next line may hold ``~.``."""
    assert feed_all(b"~\r~.") == [Filtered(b"~\r", disconnect=True)]


def test_bytes_without_escapes_pass_through_unchanged() -> None:
    """Binary keystrokes without an escape are sent byte for byte."""
    keystrokes = bytes(range(256)).replace(b"~", b"")
    assert feed_all(keystrokes) == [Filtered(keystrokes)]


def test_empty_read_keeps_a_pending_escape() -> None:
    """An empty chunk between ``~`` and ``.`` changes nothing."""
    results = feed_all(b"\r~", b"", b".")
    assert results[1] == Filtered(b"")
    assert results[2] == Filtered(b"", disconnect=True)


@pytest.fixture
def pty_follower() -> Iterator[int]:
    """Return the terminal end of a fresh pseudo-terminal pair."""
    leader, follower = os.openpty()
    yield follower
    os.close(follower)
    os.close(leader)


def local_flags(fd: int) -> int:
    """Return the terminal's lflag word (ICANON, ECHO, ISIG, ...)."""
    return int(termios.tcgetattr(fd)[3])


def test_raw_terminal_turns_off_line_editing_echo_and_signals(
    pty_follower: int,
) -> None:
    """Inside raw mode, keys reach the program unbuffered, unechoed, uncaught."""
    with raw_terminal(pty_follower):
        flags = local_flags(pty_follower)
    assert flags & (termios.ICANON | termios.ECHO | termios.ISIG) == 0


def test_raw_terminal_restores_the_terminal_after_an_error(
    pty_follower: int,
) -> None:
    """An exception inside raw mode still leaves the terminal as it was."""
    before = termios.tcgetattr(pty_follower)
    with pytest.raises(RuntimeError), raw_terminal(pty_follower):
        raise RuntimeError("session failed")
    assert termios.tcgetattr(pty_follower) == before
    assert local_flags(pty_follower) & termios.ICANON


def test_raw_terminal_accepts_a_stdin_that_is_not_a_terminal() -> None:
    """A pipe on stdin is left alone instead of failing."""
    read_end, write_end = os.pipe()
    try:
        with raw_terminal(read_end):
            pass
    finally:
        os.close(read_end)
        os.close(write_end)


def test_terminal_size_reads_columns_and_rows(pty_follower: int) -> None:
    """The size reported is the terminal's, as (columns, rows)."""
    fcntl.ioctl(pty_follower, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    assert terminal_size(pty_follower) == (111, 33)

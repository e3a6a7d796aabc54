"""The local terminal for ``wsbridge shell``: raw mode, size, escapes.

Raw mode comes from prompt_toolkit, which restores the terminal on exit
and tolerates a stdin that is not a terminal. ``EscapeFilter`` implements
OpenSSH's escape character on the keystroke stream: ``~.`` after a newline
disconnects, ``~~`` sends one tilde, ``~?`` lists the escapes. It does no
I/O and is tested by feeding bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["EscapeFilter", "Filtered", "raw_terminal", "terminal_size"]

ESCAPE = ord("~")

# Bytes after which an escape may start: ssh accepts it after Enter.
_LINE_ENDS = frozenset(b"\r\n")

ESCAPE_HELP = (
    b"\r\nSupported escape sequences:\r\n"
    b" ~.   - terminate connection\r\n"
    b" ~?   - this message\r\n"
    b" ~~   - send the escape character by typing it twice\r\n"
    b"(Note that escapes are only recognized immediately after newline.)\r\n"
)


@dataclass(frozen=True)
class Filtered:
    """What a chunk of keystrokes becomes: bytes to send, and what else."""

    send: bytes
    echo: bytes = b""
    disconnect: bool = False


class EscapeFilter:
    """Find OpenSSH-style ``~`` escapes in what the user types."""

    def __init__(self) -> None:
        self._at_line_start = True
        self._pending_escape = False

    def feed(self, data: bytes) -> Filtered:
        """Filter one chunk of keystrokes."""
        # Fast path: no tilde and no escape in progress.
        if not self._pending_escape and ESCAPE not in data:
            if data:
                self._at_line_start = data[-1] in _LINE_ENDS
            return Filtered(data)
        send = bytearray()
        echo = bytearray()
        for byte in data:
            if self._pending_escape:
                self._pending_escape = False
                if byte == ord("."):
                    return Filtered(bytes(send), bytes(echo), disconnect=True)
                if byte == ord("?"):
                    echo += ESCAPE_HELP
                    self._at_line_start = True
                    continue
                if byte != ESCAPE:
                    # Not an escape after all: the tilde was meant.
                    send.append(ESCAPE)
                send.append(byte)
            elif byte == ESCAPE and self._at_line_start:
                self._pending_escape = True
                continue
            else:
                send.append(byte)
            self._at_line_start = byte in _LINE_ENDS
        return Filtered(bytes(send), bytes(echo))


def terminal_size(fd: int = 0) -> tuple[int, int]:
    """Return (columns, rows) of the terminal on ``fd``, or a fallback.

    Stdin by default, as OpenSSH asks: it is the terminal the PTY stands
    for, even when stdout is piped elsewhere.
    """
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        size = shutil.get_terminal_size()
    return size.columns, size.lines


@contextlib.contextmanager
def raw_terminal(fd: int = 0) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode; always restore it."""
    from prompt_toolkit.input.vt100 import raw_mode

    with raw_mode(fd):
        yield

"""Reassemble the platform's JSON log lines from stream frames.

Frames do not align with lines: one line can span frames, one frame can
carry several lines, and a multi-byte UTF-8 character can be split between
frames. ``LineAssembler`` takes bytes as they come and gives back whole,
decoded lines; ``parse_line`` tells a log record from plain output. Neither
does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LEVELS",
    "MAX_LINE",
    "LineAssembler",
    "LogRecord",
    "decode_line",
    "parse_line",
]

# The levels of the DevPod logger, least to most severe (PROTOCOL.md).
LEVELS = ("trace", "debug", "info", "warning", "error", "fatal", "panic")

# The longest line kept whole; a longer one is cut into pieces this size.
MAX_LINE = 1024 * 1024

# A record without a level is a panic, as the DevPod logger writes it.
_MISSING_LEVEL = "panic"


class LineAssembler:
    """Turn a byte stream into complete lines, as bytes or as text.

    Lines are cut on bytes and decoded whole, so a character split between
    frames always comes out intact, and the raw lines stay available for
    output that must be byte for byte what the server sent.
    """

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed_raw(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take the next bytes; return the lines they complete, newline cut."""
        self._partial += data
        if self._partial.find(b"\n") < 0:
            if len(self._partial) < MAX_LINE:
                return []
            # A server that never ends its line must not fill our memory.
            line, self._partial = bytes(self._partial), bytearray()
            return [line]
        *lines, rest = self._partial.split(b"\n")
        self._partial = rest
        return [bytes(line) for line in lines]

    def finish_raw(self) -> list[bytes]:
        """Return what is left once the stream has ended (a last line)."""
        rest, self._partial = bytes(self._partial), bytearray()
        return [rest] if rest else []

    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        """Take the next bytes; return the lines they complete, decoded."""
        return [decode_line(line) for line in self.feed_raw(data)]

    def finish(self) -> list[str]:
        """Return the last, unterminated line, decoded, if there is one."""
        return [decode_line(line) for line in self.finish_raw()]


def decode_line(line: bytes) -> str:
    """Decode one line; invalid bytes become U+FFFD, a CR before LF goes.

    Replacing rather than failing: a log is for reading, and one bad byte
    must not hide the rest.
    """
    return line.decode("utf-8", errors="replace").removesuffix("\r")


@dataclass(frozen=True)
class LogRecord:
    """One JSON log line of the platform's DevPod process."""

    message: str
    level: str
    time: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> int:
        """Return the level's rank in ``LEVELS`` (unknown levels rank as info)."""
        try:
            return LEVELS.index(self.level)
        except ValueError:
            return LEVELS.index("info")


def parse_line(line: str) -> LogRecord | None:
    """Parse a log line; ``None`` means it is output in its own right.

    A line that is not a JSON object, or an object without a string
    ``message`` (such as the status result), is not a log record.
    """
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        return None
    fields = {
        key: item
        for key, item in value.items()
        if key not in ("message", "level", "time")
    }
    level = value.get("level")
    time = value.get("time")
    return LogRecord(
        message=value["message"],
        level=level.lower() if isinstance(level, str) else _MISSING_LEVEL,
        time=time if isinstance(time, str) else None,
        fields=fields,
    )

"""Reassemble the platform's JSON log lines from stream frames.

Frames do not align with lines: one line can span frames, one frame can
carry several lines, and a multi-byte UTF-8 character can be split between
frames. ``LineAssembler`` takes bytes as they come and gives back whole,
decoded lines; ``parse_line`` tells a log record from plain output. Neither
does I/O.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LEVELS", "LineAssembler", "LogRecord", "parse_line"]

# The levels of the DevPod logger, least to most severe (PROTOCOL.md).
LEVELS = ("trace", "debug", "info", "warning", "error", "fatal", "panic")

# A record without a level is a panic, as the DevPod logger writes it.
_MISSING_LEVEL = "panic"


class LineAssembler:
    """Turn a byte stream into complete lines of text, split-safe."""

    def __init__(self) -> None:
        # Invalid bytes become U+FFFD rather than ending the stream: a log
        # is for reading, and one bad byte must not hide the rest.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        """Take the next bytes; return the lines they complete."""
        text = self._partial + self._decoder.decode(bytes(data))
        *lines, self._partial = text.split("\n")
        return [line.removesuffix("\r") for line in lines]

    def finish(self) -> list[str]:
        """Return what is left once the stream has ended (a last line)."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return [rest.removesuffix("\r")] if rest else []


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

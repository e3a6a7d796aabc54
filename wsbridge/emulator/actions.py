"""The lifecycle actions ``up``, ``stop`` and ``delete``, as the platform plays them.

Each action moves its workspace through ``Busy`` to its new state and
streams JSON log lines on the way, paced over ``lifecycle_delay`` seconds.
The lines come in bursts, as a real DevPod log does, and the frames are cut
the way a client must cope with (PROTOCOL.md, "Log lines"): several lines
share a frame, a line is cut in two, and a multi-byte UTF-8 character is
split between frames. Debug lines appear with ``debug=true``; warnings and
errors go to stderr, the rest to stdout.

Only one action changes a workspace at a time: each holds the workspace's
lock from its first look at the state to its last change. A second action
on a busy workspace says that it waits, waits, and then acts on the state
it finds: a second ``up`` reports that the workspace is already running
and exits 0. A client that goes away mid-action does not stop the action;
the emulator shutting down does, and leaves the workspace ``Busy`` in its
file, so that it comes back ``Stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..protocol import FrameType, chunk_frames
from .workspaces import (
    EMULATOR_PROVIDER,
    Workspace,
    Workspaces,
    WorkspaceState,
    is_valid_workspace_name,
)

__all__ = [
    "LIFECYCLE_ACTIONS",
    "LifecycleActions",
    "LogLine",
    "log_frames",
    "split_for_frames",
]

LIFECYCLE_ACTIONS = frozenset({"up", "stop", "delete"})

EXIT_OK = 0
EXIT_FAILED = 1

# Levels sent on stderr, the rest on stdout, so that clients meet log lines
# on both streams.
STDERR_LEVELS = frozenset({"warning", "error", "fatal", "panic"})

# The first byte of a multi-byte UTF-8 sequence; continuation bytes are
# 0x80-0xBF and never start a character.
_UTF8_LEAD_MIN = 0xC0

Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class LogLine:
    """One record of the platform's DevPod log."""

    level: str
    message: str

    @property
    def stream(self) -> FrameType:
        """Return the stream this level is sent on."""
        return FrameType.STDERR if self.level in STDERR_LEVELS else FrameType.STDOUT

    def encode(self, now: datetime) -> bytes:
        """Return the JSON line, stamped ``now``, as UTF-8 with its newline."""
        stamp = now.astimezone(UTC).isoformat(timespec="milliseconds")
        record = {
            "time": stamp.replace("+00:00", "Z"),
            "message": self.message,
            "level": self.level,
        }
        # Unescaped UTF-8, as Go's encoder writes it, so that characters
        # such as "…" really are multi-byte on the wire.
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode()


# A set of lines written at one moment; an action is a list of them.
Burst = list[LogLine]


def split_for_frames(data: bytes) -> list[bytes]:
    """Return ``data`` in pieces, cut where a client must cope with a cut.

    The last line is cut in its middle, so every line before it shares the
    first frame, and the first multi-byte character is cut after its first
    byte. Empty pieces are dropped.
    """
    cuts: set[int] = set()
    last_line_start = data.rfind(b"\n", 0, len(data) - 1) + 1
    cuts.add(last_line_start + (len(data) - last_line_start) // 2)
    lead = next(
        (index for index, byte in enumerate(data) if byte >= _UTF8_LEAD_MIN), None
    )
    if lead is not None:
        cuts.add(lead + 1)

    pieces: list[bytes] = []
    start = 0
    for cut in sorted(cuts):
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return [piece for piece in pieces if piece]


def log_frames(lines: Iterable[LogLine], now: datetime) -> list[bytes]:
    """Encode a burst of lines as the frames that carry it, cut on purpose.

    Consecutive lines for the same stream share one buffer; each buffer is
    cut by ``split_for_frames``, and no frame outgrows the message limit.
    """
    buffers: list[tuple[FrameType, bytearray]] = []
    for line in lines:
        if not buffers or buffers[-1][0] is not line.stream:
            buffers.append((line.stream, bytearray()))
        buffers[-1][1].extend(line.encode(now))

    frames: list[bytes] = []
    for stream, buffer in buffers:
        for piece in split_for_frames(bytes(buffer)):
            frames.extend(chunk_frames(stream, piece))
    return frames


class LifecycleActions:
    """Run ``up``, ``stop`` and ``delete`` against the workspace records."""

    def __init__(self, workspaces: Workspaces, delay: float) -> None:
        """Pace each action's log over about ``delay`` seconds in all."""
        self._workspaces = workspaces
        self._delay = delay
        self._interrupted = asyncio.Event()

    def interrupt(self) -> None:
        """End every running action at its next pause, for shutting down."""
        self._interrupted.set()

    async def run(
        self,
        action: str,
        name: str,
        options: Mapping[str, Any],
        debug: bool,
        send: Send,
    ) -> int:
        """Run ``action`` on workspace ``name``; return the exit code.

        ``send`` takes each frame of the log; it must not raise when the
        client has gone, so that the action still completes.
        """
        log = _Log(send, debug)
        if debug:
            received = ", ".join(sorted(options)) or "none"
            await log.write([LogLine("debug", f"Received options: {received}")])
        try:
            if action == "up":
                return await self._up(name, options, log)
            if action == "stop":
                return await self._stop(name, log)
            if action == "delete":
                return await self._delete(name, options, log)
        except _Interrupted:
            message = f"The emulator is shutting down; workspace {name} stays Busy"
            await log.write([LogLine("error", message)])
            return EXIT_FAILED
        raise ValueError(f"{action!r} is not a lifecycle action")

    # The actions.

    async def _up(self, name: str, options: Mapping[str, Any], log: _Log) -> int:
        """Create or start the workspace; a running one is left alone."""
        if not is_valid_workspace_name(name):
            await log.write([_invalid_name(name)])
            return EXIT_FAILED

        workspace = self._workspaces.record(name)
        async with self._exclusive(workspace, log):
            if workspace.state is WorkspaceState.RUNNING:
                await log.write(
                    [LogLine("info", f"Workspace {name} is already running")]
                )
                return EXIT_OK
            creating = workspace.state is WorkspaceState.NOT_FOUND
            self._workspaces.set_state(workspace, WorkspaceState.BUSY)
            await self._play(log, _up_script(name, creating, options))
            self._workspaces.set_state(workspace, WorkspaceState.RUNNING)
        return EXIT_OK

    async def _stop(self, name: str, log: _Log) -> int:
        """Stop a running workspace; a stopped one is left alone."""
        workspace = self._workspaces.get(name)
        if workspace is None:
            await log.write([_not_found(name)])
            return EXIT_FAILED

        async with self._exclusive(workspace, log):
            if workspace.state is WorkspaceState.NOT_FOUND:
                await log.write([_not_found(name)])
                return EXIT_FAILED
            if workspace.state is WorkspaceState.STOPPED:
                await log.write(
                    [LogLine("info", f"Workspace {name} is already stopped")]
                )
                return EXIT_OK
            self._workspaces.set_state(workspace, WorkspaceState.BUSY)
            await self._play(log, _stop_script(name))
            self._workspaces.set_state(workspace, WorkspaceState.STOPPED)
        return EXIT_OK

    async def _delete(self, name: str, options: Mapping[str, Any], log: _Log) -> int:
        """Delete the workspace; a missing one fails unless ``ignoreNotFound``."""
        workspace = self._workspaces.get(name)
        if workspace is None:
            return await self._delete_missing(name, options, log)

        async with self._exclusive(workspace, log):
            if workspace.state is WorkspaceState.NOT_FOUND:
                return await self._delete_missing(name, options, log)
            self._workspaces.set_state(workspace, WorkspaceState.BUSY)
            await self._play(log, _delete_script(name, options))
            self._workspaces.set_state(workspace, WorkspaceState.NOT_FOUND)
        return EXIT_OK

    async def _delete_missing(
        self, name: str, options: Mapping[str, Any], log: _Log
    ) -> int:
        """Answer a delete of a workspace that is not there."""
        if options.get("ignoreNotFound") is True:
            message = f"Workspace {name} not found; nothing to delete"
            await log.write([LogLine("info", message)])
            return EXIT_OK
        await log.write([_not_found(name)])
        return EXIT_FAILED

    # Helpers.

    @contextlib.asynccontextmanager
    async def _exclusive(self, workspace: Workspace, log: _Log) -> AsyncIterator[None]:
        """Hold the workspace's lock, saying so first if another action has it."""
        if workspace.lock.locked():
            message = (
                f"Workspace {workspace.name} is busy with another action; "
                "waiting for it to finish"
            )
            await log.write([LogLine("info", message)])
        async with workspace.lock:
            yield

    async def _play(self, log: _Log, script: list[Burst]) -> None:
        """Write the bursts of ``script``, spread over the action's delay.

        Raises:
            _Interrupted: the emulator began shutting down.
        """
        pause = self._delay / max(len(script) - 1, 1)
        for index, burst in enumerate(script):
            if index:
                # The pause is the action's pacing; shutting down cuts it short.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._interrupted.wait()
            if self._interrupted.is_set():
                raise _Interrupted
            await log.write(burst)


class _Interrupted(Exception):
    """The emulator is shutting down in the middle of an action."""


class _Log:
    """The log of one action: drops debug lines unless asked, sends the rest."""

    def __init__(self, send: Send, debug: bool) -> None:
        self._send = send
        self._debug = debug

    async def write(self, burst: Burst) -> None:
        """Send ``burst`` now, cut into frames the way ``log_frames`` cuts."""
        shown = [line for line in burst if self._debug or line.level != "debug"]
        for frame in log_frames(shown, datetime.now(UTC)):
            await self._send(frame)


# What each action logs. "…" and "✓" are there on purpose: clients must
# reassemble characters that a frame boundary splits.


def _up_script(name: str, creating: bool, options: Mapping[str, Any]) -> list[Burst]:
    """Return the log of starting (or first creating) a workspace."""
    source = options.get("source")
    if isinstance(source, str) and source:
        source_line = LogLine("info", f"Using source {source}")
    else:
        source_line = LogLine("info", "No source given: the workspace starts empty")
    previous = WorkspaceState.NOT_FOUND if creating else WorkspaceState.STOPPED
    return [
        [
            LogLine(
                "info", f"{'Creating' if creating else 'Starting'} workspace {name}"
            ),
            LogLine("debug", f"Workspace {name} was {previous.value}"),
            LogLine("info", f"Using provider {EMULATOR_PROVIDER}"),
            source_line,
        ],
        [
            LogLine(
                "warning",
                f"Workspace {name} is emulated: no container is created, and "
                "ssh reaches the emulator's SSH server",
            ),
            LogLine("info", "Starting devcontainer…"),
        ],
        [
            LogLine("debug", "Waiting for the SSH server to answer"),
            LogLine("info", "SSH server is ready"),
        ],
        [LogLine("info", f"Workspace {name} is running ✓")],
    ]


def _stop_script(name: str) -> list[Burst]:
    """Return the log of stopping a running workspace."""
    return [
        [LogLine("info", f"Stopping workspace {name}")],
        [
            LogLine("debug", "Sending the stop signal to the devcontainer"),
            LogLine("info", "Stopping devcontainer…"),
        ],
        [LogLine("info", f"Workspace {name} is stopped ✓")],
    ]


def _delete_script(name: str, options: Mapping[str, Any]) -> list[Burst]:
    """Return the log of deleting a workspace."""
    grace = options.get("gracePeriod")
    force = options.get("force") is True
    detail = f"force {'on' if force else 'off'}, grace period {grace or 'default'}"
    return [
        [
            LogLine("info", f"Deleting workspace {name}"),
            LogLine("debug", f"Delete options: {detail}"),
        ],
        [LogLine("info", "Removing devcontainer…")],
        [LogLine("info", f"Workspace {name} is deleted ✓")],
    ]


def _not_found(name: str) -> LogLine:
    """Return the error line for a workspace that does not exist."""
    return LogLine("error", f"workspace {name} not found")


def _invalid_name(name: str) -> LogLine:
    """Return the error line for a name DevPod would refuse."""
    return LogLine(
        "error",
        f"invalid workspace name {name!r}: use lowercase letters, digits and "
        "dashes (at most 48, not starting or ending with a dash)",
    )

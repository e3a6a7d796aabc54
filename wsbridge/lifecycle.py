"""Workspace lifecycle: run actions, read status, start on connect.

The library API for Python users::

    endpoint = ConnectionSettings(server="devpod.example.com").resolve()
    status = await get_status(endpoint, "my-workspace")
    if status["state"] != "Running":
        code = await run_action(endpoint, "my-workspace", "up",
                                stdout=my_sink, stderr=my_sink)

``run_action`` streams the action's raw output to any ``ByteSink`` (an
``asyncio.StreamWriter``, or a ``render.LogView`` sink that shows log
records) and returns the remote exit code.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from .channel import ByteSink, ByteSource, Channel
from .endpoint import Endpoint
from .errors import (
    ConnectionLost,
    ProtocolViolation,
    UsageError,
    WorkspaceNotFound,
    WsbridgeError,
)
from .loglines import LineAssembler, parse_line
from .render import LogView

__all__ = [
    "Action",
    "StartFailed",
    "WorkspaceState",
    "build_options",
    "connect_with_autostart",
    "ensure_running",
    "get_status",
    "print_status",
    "run_action",
]

logger = logging.getLogger("wsbridge.lifecycle")

# The documented status action, and the name the open-source DevPod client
# dials; the second is tried when the first answers 404 (PROTOCOL.md).
STATUS_ACTIONS = ("get-status", "getstatus")

# What the DevPod client asks the status action for (PROTOCOL.md).
STATUS_OPTIONS = {"containerStatus": True}

# Waiting for a Busy workspace: first pause, growth, cap and total budget.
BUSY_FIRST_WAIT = 1.0
BUSY_BACKOFF = 2.0
BUSY_MAX_WAIT = 10.0
BUSY_TIMEOUT = 600.0

# Client bytes kept for a replay after an auto-start: an SSH client sends
# only its banner and key exchange before the server answers, far less.
REPLAY_LIMIT = 256 * 1024


class Action(enum.StrEnum):
    """The workspace commands the platform exposes as websockets."""

    UP = "up"
    STOP = "stop"
    STATUS = "get-status"
    DELETE = "delete"
    SSH = "ssh"


class WorkspaceState(enum.StrEnum):
    """The states ``get-status`` reports."""

    RUNNING = "Running"
    BUSY = "Busy"
    STOPPED = "Stopped"
    NOT_FOUND = "NotFound"


class StartFailed(WsbridgeError):
    """Starting a workspace for a connection did not succeed."""


def build_options(
    pairs: Sequence[str] = (), options_json: str | None = None
) -> dict[str, Any]:
    """Build the ``options`` object from ``--options`` and ``--option`` flags.

    ``--options`` gives a whole JSON object; each ``KEY=VALUE`` then sets one
    key, its value read as JSON when it parses (``true``, ``3``, ``{...}``)
    and as a string otherwise.
    """
    options: dict[str, Any] = {}
    if options_json is not None:
        try:
            parsed = json.loads(options_json)
        except ValueError as exc:
            raise UsageError(f"--options is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise UsageError("--options must be a JSON object")
        options.update(parsed)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options


def action_query(action: str, debug: bool) -> dict[str, str]:
    """Return the plain query parameters PROTOCOL.md lists for ``action``."""
    if action == Action.UP:
        return {"webMode": "true", "debug": _flag(debug)}
    if action in (Action.DELETE, *STATUS_ACTIONS) or debug:
        return {"debug": _flag(debug)}
    return {}


def _flag(value: bool) -> str:
    return "true" if value else "false"


async def run_action(
    endpoint: Endpoint,
    workspace: str,
    action: str,
    *,
    stdout: ByteSink,
    stderr: ByteSink,
    options: Mapping[str, Any] | None = None,
    debug: bool = False,
) -> int:
    """Run one lifecycle action, stream its output, return its exit code.

    Raises:
        WorkspaceNotFound: the server answered 404.
        ConnectionFailed: the action could not be reached or was cut off.
    """
    if action == Action.STATUS:
        return await _run_status(endpoint, workspace, stdout, stderr, options, debug)
    channel = await Channel.open(
        endpoint, workspace, action, options, action_query(action, debug)
    )
    async with channel:
        return await channel.run(None, stdout, stderr)


async def _run_status(
    endpoint: Endpoint,
    workspace: str,
    stdout: ByteSink,
    stderr: ByteSink,
    options: Mapping[str, Any] | None,
    debug: bool,
) -> int:
    """Run the status action under its documented name, then the other."""
    for action in STATUS_ACTIONS:
        try:
            channel = await Channel.open(
                endpoint, workspace, action, options, action_query(action, debug)
            )
        except WorkspaceNotFound:
            if action == STATUS_ACTIONS[-1]:
                raise
            logger.info("%s answered 404; trying %s", action, STATUS_ACTIONS[-1])
            continue
        async with channel:
            return await channel.run(None, stdout, stderr)
    raise AssertionError("unreachable")


class _StatusCollector:
    """A sink that finds the status object among the action's output."""

    def __init__(self) -> None:
        self._assembler = LineAssembler()
        self.status: dict[str, Any] | None = None
        self.raw_line: str | None = None
        self.other_lines: list[str] = []

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        for line in self._assembler.feed(data):
            self._take(line)

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        for line in self._assembler.finish():
            self._take(line)

    def _take(self, line: str) -> None:
        if parse_line(line) is None and line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if isinstance(value, dict) and "state" in value:
                self.status, self.raw_line = value, line
                return
        self.other_lines.append(line)


async def print_status(
    endpoint: Endpoint,
    workspace: str,
    view: LogView,
    out: TextIO,
    *,
    json_output: bool = False,
    options: Mapping[str, Any] | None = None,
    debug: bool = False,
) -> int:
    """Print the workspace's state (or its status object) to ``out``.

    Log lines the action prints on the way are shown on ``view``'s stderr.
    Returns the action's exit code; 0 means ``out`` has the answer.
    """
    collector = _StatusCollector()
    async with view.running():
        code = await _run_status(
            endpoint,
            workspace,
            collector,
            view.sink(view.stderr),
            options or STATUS_OPTIONS,
            debug,
        )
        collector.write_eof()
        await view.show(view.stderr, collector.other_lines)
    if code != 0:
        return code
    if collector.status is None or collector.raw_line is None:
        raise ProtocolViolation(
            f"the status action for {workspace!r} printed no status object"
        )
    out.write(f"{collector.raw_line if json_output else collector.status['state']}\n")
    out.flush()
    return 0


async def get_status(
    endpoint: Endpoint, workspace: str, *, stderr: ByteSink | None = None
) -> dict[str, Any]:
    """Return the workspace's status object (its ``state`` says the state).

    Raises:
        WorkspaceNotFound: neither status action exists for the workspace.
        StartFailed: the action failed or printed no status object.
    """
    collector = _StatusCollector()
    errors = stderr or _StatusCollector()
    code = await _run_status(
        endpoint, workspace, collector, errors, STATUS_OPTIONS, False
    )
    collector.write_eof()
    if code != 0 or collector.status is None:
        raise StartFailed(
            f"could not read the status of {workspace!r} "
            f"(exit code {code}{', no status in the output' if code == 0 else ''})"
        )
    return collector.status


async def ensure_running(endpoint: Endpoint, workspace: str, view: LogView) -> None:
    """Start ``workspace`` if it is stopped; wait while it is busy.

    Progress goes to ``view`` (stderr for a proxy). Raises StartFailed or
    WorkspaceNotFound when the workspace cannot be made to run.
    """
    wait = BUSY_FIRST_WAIT
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUSY_TIMEOUT
    started = False
    while True:
        status = await get_status(endpoint, workspace, stderr=view.sink(view.stderr))
        state = status.get("state")
        logger.info("workspace %s is %s", workspace, state)
        if state == WorkspaceState.RUNNING:
            return
        if state == WorkspaceState.NOT_FOUND:
            raise WorkspaceNotFound(f"workspace {workspace!r} does not exist")
        if state == WorkspaceState.STOPPED and started:
            # One start per connection: a platform that reports success and
            # still says Stopped would otherwise be asked forever.
            raise StartFailed(
                f"workspace {workspace!r} is still Stopped after a successful up"
            )
        if state == WorkspaceState.STOPPED:
            started = True
            await view.note(f"wsbridge: workspace {workspace} is stopped; starting it")
            async with view.running():
                sink = view.sink(view.stderr)
                code = await run_action(
                    endpoint, workspace, Action.UP, stdout=sink, stderr=sink
                )
            if code != 0:
                raise StartFailed(
                    f"starting workspace {workspace!r} failed with exit code {code}"
                )
            continue
        # Busy (or a state we do not know): wait, visibly and boundedly.
        if loop.time() + wait > deadline:
            raise StartFailed(
                f"workspace {workspace!r} stayed {state} for "
                f"{BUSY_TIMEOUT:.0f} s; try again later"
            )
        await view.note(
            f"wsbridge: workspace {workspace} is {state}; checking again in "
            f"{wait:.0f} s"
        )
        await asyncio.sleep(wait)
        wait = min(wait * BUSY_BACKOFF, BUSY_MAX_WAIT)


class _ReplaySource:
    """A stdin that remembers what it read, so a retry can send it again."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._record: bytearray | None = bytearray()
        self._replay = memoryview(b"")

    @property
    def replayable(self) -> bool:
        """Tell whether everything read so far is still remembered."""
        return self._record is not None

    def rewind(self) -> None:
        """Make the next reads return what was read before."""
        if self._record is None:
            raise RuntimeError("the input outgrew the replay buffer")
        self._replay = memoryview(bytes(self._record))

    def forget(self) -> None:
        """Stop remembering: the session proved itself."""
        self._record = None

    async def read(self, n: int = -1, /) -> bytes:
        if self._replay:
            size = len(self._replay) if n < 0 else n
            data, self._replay = self._replay[:size].tobytes(), self._replay[size:]
            return data
        data = await self._source.read(n)
        if self._record is not None:
            self._record += data
            if len(self._record) > REPLAY_LIMIT:
                self._record = None
        return data


class _WatchedSink:
    """A sink that notices the first byte of output passing through.

    Until that byte, the end of the stream is held back rather than passed
    on: the session may yet be retried after a start, and the retry needs
    the stream open.
    """

    def __init__(self, sink: ByteSink, replay: _ReplaySource) -> None:
        self._sink = sink
        self._replay = replay
        self.started = False
        self.eof_held = False

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if not self.started:
            self.started = True
            self._replay.forget()
        self._sink.write(data)

    async def drain(self) -> None:
        await self._sink.drain()

    def can_write_eof(self) -> bool:
        return self._sink.can_write_eof()

    def write_eof(self) -> None:
        if self.started:
            self._sink.write_eof()
        else:
            self.eof_held = True

    def release_eof(self) -> None:
        """Pass on an end of stream held back, now that no retry follows."""
        if self.eof_held:
            self.eof_held = False
            self._sink.write_eof()


async def connect_with_autostart(
    endpoint: Endpoint,
    workspace: str,
    stdin: ByteSource,
    stdout: ByteSink,
    stderr: ByteSink,
    *,
    view: LogView | None = None,
) -> int:
    """Run the ``ssh`` action; if the workspace is not running, start it.

    The first attempt is optimistic, so a running workspace costs nothing
    extra. When it ends before the SSH server has said a word (the platform
    explains on stderr that the workspace is not running), the workspace is
    started, with its log on ``view``, and the session is opened again with
    the client's bytes replayed. Without ``view`` no start is tried.
    """
    source = _ReplaySource(stdin)
    for attempt in (1, 2):
        watched = _WatchedSink(stdout, source)
        failure: WsbridgeError | None = None
        channel = await Channel.open(endpoint, workspace, Action.SSH)
        async with channel:
            try:
                code = await channel.run(source, watched, stderr)
            except ConnectionLost as exc:
                failure, code = exc, -1
        retry = (
            view is not None
            and attempt == 1
            and code != 0
            and not watched.started
            and source.replayable
        )
        if not retry:
            watched.release_eof()
            if failure is not None:
                raise failure
            return code
        assert view is not None
        logger.info("ssh ended before any output (exit %d); checking status", code)
        await ensure_running(endpoint, workspace, view)
        source.rewind()
    raise AssertionError("unreachable")

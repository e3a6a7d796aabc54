"""A websocket peer that speaks the workspace framing and misbehaves on purpose.

It stands in for the platform in tests of what ``wsbridge proxy`` does when
the server drops the TCP connection, closes without an exit code, or ends a
command right after a burst of output, and of how the lifecycle commands
render frames that do not align with log lines. It can answer chosen actions
with 404 at the handshake. It encodes frames itself rather than with
``wsbridge.protocol`` so that a codec bug cannot hide on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .procs import START_TIMEOUT, scaled

# Frame type bytes from PROTOCOL.md.
STDOUT = 0
STDOUT_CLOSE = 1
STDERR = 2
STDERR_CLOSE = 3
STDIN = 4
STDIN_CLOSE = 5
EXIT_CODE = 6

# The platform's message limit, type byte included (PROTOCOL.md).
MAX_PAYLOAD = 32767

# How long a behaviour waits for the client to close after the exit code.
CLIENT_CLOSE_TIMEOUT = 10.0

# How long ``hold_open`` keeps a command running: far longer than any test
# takes to interrupt it.
HOLD_TIMEOUT = 60.0

# A behaviour drives one websocket session and notes what it saw.
Behaviour = Callable[[ServerConnection, "Outcome"], Awaitable[None]]


def stdout_frame(payload: bytes) -> bytes:
    """Encode a stdout data frame."""
    return bytes((STDOUT,)) + payload


def stderr_frame(payload: bytes) -> bytes:
    """Encode a stderr data frame."""
    return bytes((STDERR,)) + payload


def exit_code_frame(code: int) -> bytes:
    """Encode an exit-code frame: a zig-zag varint, as Go's AppendVarint does."""
    unsigned = (code << 1) ^ (code >> 63)
    varint = bytearray()
    while unsigned >= 0x80:
        varint.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    varint.append(unsigned)
    return bytes((EXIT_CODE,)) + bytes(varint)


@dataclass
class Handshake:
    """What the client asked for when it opened the websocket."""

    path: str
    headers: Headers


@dataclass
class Outcome:
    """What a behaviour observed, for tests to assert on."""

    client_close_code: int | None = None
    stdout_sent: int = 0
    events: list[str] = field(default_factory=list)


class FaultyPeer:
    """Serve one ``Behaviour`` on a loopback port from a background thread.

    Handshakes for an action named in ``not_found`` (the last path segment)
    are recorded, then answered with HTTP 404.
    """

    def __init__(
        self, behaviour: Behaviour, *, not_found: Collection[str] = ()
    ) -> None:
        self._behaviour = behaviour
        self._not_found = frozenset(not_found)
        self.handshakes: list[Handshake] = []
        self.outcome = Outcome()
        self.port = 0
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="faulty-peer")

    @property
    def url(self) -> str:
        """Return the server URL to hand to ``wsbridge proxy --server``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        """Return the request paths of every handshake, query included, in order."""
        return [handshake.path for handshake in self.handshakes]

    def wait_finished(self, timeout: float) -> bool:
        """Wait until a session's behaviour has returned; tell whether it did."""
        return self._finished.wait(scaled(timeout))

    def __enter__(self) -> FaultyPeer:
        self._thread.start()
        if not self._ready.wait(scaled(START_TIMEOUT)):
            raise RuntimeError("the faulty peer did not start listening")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(scaled(START_TIMEOUT))

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._record,
            max_size=None,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _record(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self.handshakes.append(Handshake(request.path, request.headers))
        action = request.path.partition("?")[0].rpartition("/")[2]
        if action in self._not_found:
            return connection.respond(404, f"No action {action} here.\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        try:
            await self._behaviour(connection, self.outcome)
        finally:
            self._finished.set()


# --- behaviours -----------------------------------------------------------


async def _wait_for_client_close(
    connection: ServerConnection, outcome: Outcome
) -> None:
    """Let the client close first, as PROTOCOL.md asks, and note its code."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(scaled(CLIENT_CLOSE_TIMEOUT)):
            async for _ in connection:
                pass
    outcome.client_close_code = connection.close_code


def exit_after_output(payload: bytes, code: int) -> Behaviour:
    """Send ``payload`` as stdout, then exit with ``code`` at once."""

    async def behaviour(connection: ServerConnection, outcome: Outcome) -> None:
        for start in range(0, len(payload), MAX_PAYLOAD):
            chunk = payload[start : start + MAX_PAYLOAD]
            await connection.send(stdout_frame(chunk))
            outcome.stdout_sent += len(chunk)
        await connection.send(exit_code_frame(code))
        await _wait_for_client_close(connection, outcome)

    return behaviour


def play(messages: Sequence[bytes], code: int) -> Behaviour:
    """Send ``messages`` (whole encoded frames) in order, then exit with ``code``."""

    async def behaviour(connection: ServerConnection, outcome: Outcome) -> None:
        for message in messages:
            await connection.send(message)
        await connection.send(exit_code_frame(code))
        await _wait_for_client_close(connection, outcome)

    return behaviour


def by_action(behaviours: dict[str, Behaviour]) -> Behaviour:
    """Pick the behaviour by the action the client asked for (last path part)."""

    async def behaviour(connection: ServerConnection, outcome: Outcome) -> None:
        assert connection.request is not None
        action = connection.request.path.split("?")[0].rsplit("/", 1)[-1]
        await behaviours[action](connection, outcome)

    return behaviour


def hold_open(messages: Sequence[bytes]) -> Behaviour:
    """Send ``messages``, then keep the command running until the client closes."""

    async def behaviour(connection: ServerConnection, outcome: Outcome) -> None:
        for message in messages:
            await connection.send(message)
        outcome.events.append("holding")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(scaled(HOLD_TIMEOUT)):
                async for _ in connection:
                    pass
        outcome.client_close_code = connection.close_code

    return behaviour


def close_without_exit_code(payload: bytes) -> Behaviour:
    """Send ``payload`` as stdout, then close normally (1000) with no exit code."""

    async def behaviour(connection: ServerConnection, outcome: Outcome) -> None:
        await connection.send(stdout_frame(payload))
        outcome.stdout_sent += len(payload)
        await connection.close(1000)

    return behaviour


def splice_then_abort(upstream_port: int, abort_after: int) -> Behaviour:
    """Splice to an SSH server, then drop TCP after ``abort_after`` stdout bytes.

    The drop is ``transport.abort()``: no close frame, no FIN, just a reset,
    as when a load balancer or a node goes away mid-transfer.
    """

    async def behaviour(connection: ServerConnection, outcome: Outcome) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", upstream_port)

        async def server_to_client() -> None:
            while chunk := await reader.read(MAX_PAYLOAD):
                await connection.send(stdout_frame(chunk))
                outcome.stdout_sent += len(chunk)
                if outcome.stdout_sent >= abort_after:
                    outcome.events.append("aborted")
                    connection.transport.abort()
                    return

        async def client_to_server() -> None:
            async for message in connection:
                if not isinstance(message, bytes) or not message:
                    continue
                if message[0] == STDIN:
                    writer.write(message[1:])
                    await writer.drain()
                elif message[0] == STDIN_CLOSE:
                    writer.write_eof()

        pumps = [
            asyncio.create_task(server_to_client()),
            asyncio.create_task(client_to_server()),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            writer.close()

    return behaviour

"""One websocket session of one workspace action.

A ``Channel`` opens the websocket, keeps it alive with pings, sends local
input as stdin frames (and a stdin close at EOF), writes stdout and stderr
frames to local sinks, and finishes on the exit-code frame. Every bridge
(stdio, TCP, the in-process SSH client) and every lifecycle command runs
through it.

Backpressure is end to end: a frame is not read from the websocket until
the previous one has been drained by its sink, and websockets stops
reading from the socket when its small receive queue is full, so a slow
reader slows the server and memory stays bounded.

    async with await Channel.open(endpoint, "demo", "ssh") as channel:
        exit_code = await channel.run(stdin, stdout, stderr)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)

from . import __version__, protocol
from .endpoint import Endpoint
from .errors import (
    AuthRejected,
    ConnectionFailed,
    ConnectionLost,
    HandshakeRejected,
    LocalStreamClosed,
    TLSFailed,
    WorkspaceNotFound,
)
from .protocol import FrameType, Ignored

__all__ = ["ByteSink", "ByteSource", "Channel"]

# The DevPod client pings every 10 s and the platform drops a connection it
# has not heard from for 60 s (PROTOCOL.md, "Keepalive"); a pong missing for
# 20 s means the connection is dead (issue 2).
PING_INTERVAL = 10.0
PING_TIMEOUT = 20.0

# How long the TCP, TLS and HTTP upgrade together may take.
OPEN_TIMEOUT = 30.0

# After the exit code the session is over; the closing handshake is a
# courtesy, and a ProxyCommand that lingers stalls the ssh client.
CLOSE_TIMEOUT = 2.0

# Messages websockets may queue before it stops reading from the socket:
# with 32 KiB messages this bounds what one channel buffers to about 0.5 MiB.
RECEIVE_QUEUE = 16
SEND_BUFFER = 512 * 1024

# Payload bytes shown per frame in debug logs.
DEBUG_PAYLOAD_BYTES = 32

# OpenSSL verify codes that mean "issued by a CA you do not trust", the
# cases --ca-file fixes (X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT and friends).
_UNKNOWN_ISSUER_CODES = frozenset({2, 18, 19, 20, 21})

logger = logging.getLogger("wsbridge.channel")

# websockets' own logger shows request headers at DEBUG, and those carry the
# access key, so it gets a logger of ours that the CLI never lets reach DEBUG.
wire_logger = logging.getLogger("wsbridge.wire")

_session_ids = itertools.count(1)


class ByteSource(Protocol):
    """Where stdin comes from: ``read`` returns ``b""`` at end of input."""

    async def read(self, n: int = -1, /) -> bytes: ...


class ByteSink(Protocol):
    """Where stdout or stderr goes; ``asyncio.StreamWriter`` is one."""

    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...


class _SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefix every line with the session it belongs to."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['session']}] {msg}", kwargs  # type: ignore[index]


class Channel:
    """An open websocket to one action of one workspace."""

    def __init__(
        self, connection: ClientConnection, endpoint: Endpoint, label: str
    ) -> None:
        self._connection = connection
        self._endpoint = endpoint
        self._log = _SessionLog(logger, {"session": label})
        self._opened_at = time.monotonic()
        self.bytes_sent = 0
        self.bytes_received = 0

    # Opening and closing.

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        workspace: str,
        action: str,
        options: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Channel:
        """Connect to ``action`` of ``workspace`` and complete the handshake.

        Raises:
            AuthRejected: the server refused the access key.
            WorkspaceNotFound: the server answered 404.
            TLSFailed: the server's certificate could not be verified.
            ConnectionFailed: the server could not be reached or upgraded.
        """
        label = f"{action}#{next(_session_ids)} {workspace}"
        log = _SessionLog(logger, {"session": label})
        url = endpoint.action_url(workspace, action, options, query)
        log.info("connecting to %s (project %s)", endpoint.display_host,
                 endpoint.project)
        try:
            connection = await connect(
                url,
                additional_headers=endpoint.auth_headers(),
                user_agent_header=f"wsbridge/{__version__}",
                compression=None,
                ssl=endpoint.ssl_context if endpoint.is_secure else None,
                open_timeout=OPEN_TIMEOUT,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                max_size=protocol.RECEIVE_LIMIT,
                max_queue=RECEIVE_QUEUE,
                write_limit=SEND_BUFFER,
                logger=wire_logger,
            )
        except Exception as exc:
            raise _handshake_error(exc, endpoint, workspace, action) from exc
        log.info("connected")
        return cls(connection, endpoint, label)

    async def close(self) -> None:
        """Close the websocket with status 1000; safe to call twice."""
        with contextlib.suppress(Exception):
            await self._connection.close(1000)
        self._log.info(
            "closed after %.1f s: %d bytes sent, %d received",
            time.monotonic() - self._opened_at,
            self.bytes_sent,
            self.bytes_received,
        )

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # Running the command.

    async def run(
        self,
        stdin: ByteSource | None,
        stdout: ByteSink,
        stderr: ByteSink,
    ) -> int:
        """Pump stdin up and stdout/stderr down until the exit code arrives.

        ``stdin`` of ``None`` sends a stdin close at once. Returns the remote
        exit code as sent (it may be negative or above 255).

        Raises:
            ConnectionLost: the websocket ended before the exit code.
            ProtocolViolation: the exit code frame was malformed.
            LocalStreamClosed: a local sink stopped accepting output.
        """
        sender = asyncio.create_task(self._send_stdin(stdin))
        try:
            exit_code = await self._receive(stdout, stderr)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        self._log.info("exit code %d", exit_code)
        return exit_code

    async def _send_stdin(self, stdin: ByteSource | None) -> None:
        """Send local input as stdin frames, then a stdin close."""
        send = self._connection.send
        debug = self._log.isEnabledFor(logging.DEBUG)
        try:
            while stdin is not None:
                try:
                    data = await stdin.read(protocol.MAX_PAYLOAD_SIZE)
                except OSError as exc:
                    # A broken local input ends it like EOF: output may
                    # still be owed to the user.
                    self._log.warning("reading local input failed: %s", exc)
                    break
                if not data:
                    break
                if debug:
                    self._log.debug(
                        "> STDIN %d bytes %r", len(data), data[:DEBUG_PAYLOAD_BYTES]
                    )
                self.bytes_sent += len(data)
                await send(protocol.encode(FrameType.STDIN, data))
            self._log.debug("stdin at EOF; sending stdin close")
            await send(protocol.encode(FrameType.STDIN_CLOSE))
        except ConnectionClosed:
            # The receiving side reports how the connection ended.
            return

    async def _receive(self, stdout: ByteSink, stderr: ByteSink) -> int:
        """Deliver frames to the sinks; return the exit code."""
        debug = self._log.isEnabledFor(logging.DEBUG)
        try:
            async for message in self._connection:
                frame = protocol.decode(message)
                if isinstance(frame, Ignored):
                    self._log.debug("skipping message: %s", frame.reason)
                    continue
                if debug:
                    self._log.debug(
                        "< %s %d bytes %r", frame.type.name, len(frame.payload),
                        bytes(frame.payload[:DEBUG_PAYLOAD_BYTES]),
                    )
                match frame.type:
                    case FrameType.STDOUT:
                        self.bytes_received += len(frame.payload)
                        await _deliver(stdout, frame.payload, "standard output")
                    case FrameType.STDERR:
                        await _deliver(stderr, frame.payload, "standard error")
                    case FrameType.STDOUT_CLOSE:
                        if stdout.can_write_eof():
                            stdout.write_eof()
                    case FrameType.EXIT_CODE:
                        return frame.exit_code
                    case _:
                        # Stderr close needs nothing; stdin frames travel the
                        # other way and have no meaning here.
                        pass
        except ConnectionClosed as exc:
            raise _lost(exc, self._endpoint) from exc
        raise ConnectionLost(
            f"{self._endpoint.display_host} closed the connection "
            "without sending an exit code"
        )


async def _deliver(sink: ByteSink, payload: memoryview, name: str) -> None:
    """Write ``payload`` and wait until the sink can take more."""
    try:
        sink.write(payload)
        await sink.drain()
    except (ConnectionError, OSError) as exc:
        raise LocalStreamClosed(f"local {name} was closed: {exc}") from exc


def _lost(exc: ConnectionClosed, endpoint: Endpoint) -> ConnectionLost:
    """Describe how a websocket ended before the exit code."""
    host = endpoint.display_host
    if isinstance(exc, ConnectionClosedOK):
        return ConnectionLost(f"{host} closed the connection before the exit code")
    sent, received = exc.sent, exc.rcvd
    if sent is not None and sent.code == 1011 and received is None:
        return ConnectionLost(
            f"connection to {host} lost: no answer to keepalive pings "
            f"for {PING_TIMEOUT:.0f} s"
        )
    if received is not None:
        reason = f": {received.reason}" if received.reason else ""
        return ConnectionLost(
            f"connection to {host} closed by the server with code "
            f"{received.code}{reason}"
        )
    return ConnectionLost(
        f"connection to {host} lost (dropped without a websocket close)"
    )


def _handshake_error(
    exc: Exception, endpoint: Endpoint, workspace: str, action: str
) -> ConnectionFailed:
    """Translate an exception from ``connect`` into a wsbridge error."""
    host = endpoint.display_host
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return AuthRejected(
                f"{host} rejected the access key (HTTP {status}); "
                "check the key and the project"
            )
        if status == 404:
            return WorkspaceNotFound(
                f"workspace {workspace!r} not found in project "
                f"{endpoint.project!r} on {host} (HTTP 404 for action {action})"
            )
        return HandshakeRejected(
            f"{host} refused the websocket for {action} with HTTP {status}",
            status,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            " (use --ca-file to trust its CA)"
            if exc.verify_code in _UNKNOWN_ISSUER_CODES
            else ""
        )
        return TLSFailed(
            f"TLS certificate of {host} could not be verified: "
            f"{exc.verify_message}{hint}"
        )
    if isinstance(exc, ssl.SSLError):
        return TLSFailed(f"TLS handshake with {host} failed: {exc.reason or exc}")
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(
            f"timed out after {OPEN_TIMEOUT:.0f} s connecting to {host}"
        )
    if isinstance(exc, ConnectionResetError) and endpoint.is_secure:
        return TLSFailed(
            f"TLS handshake with {host} failed: the server reset the connection "
            "(does it speak plain ws:// or http://?)"
        )
    if isinstance(exc, socket.gaierror):
        return ConnectionFailed(f"cannot resolve {host}: {exc.strerror}")
    if isinstance(exc, OSError):
        # asyncio words refusals as "Connect call failed (...)"; the errno's
        # own text reads better.
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or (
            type(exc).__name__
        )
        return ConnectionFailed(f"cannot connect to {host}: {reason}")
    if isinstance(exc, InvalidProxy):
        # The proxy URL comes from the environment and may carry a password.
        return ConnectionFailed(
            "the proxy setting (HTTPS_PROXY or HTTP_PROXY) is not a valid URL"
        )
    if isinstance(exc, InvalidURI):
        return ConnectionFailed(f"invalid server URL for {host}: {exc}")
    if isinstance(exc, InvalidHandshake):
        return ConnectionFailed(f"websocket handshake with {host} failed: {exc}")
    if isinstance(exc, ConnectionClosed):
        return ConnectionFailed(f"{host} closed the connection during the handshake")
    raise exc

"""A local TCP port that leads to a workspace's SSH server.

``serve_tcp`` listens on a loopback port and gives every accepted connection
its own ``ssh`` websocket, so that several SSH clients (OpenSSH, JetBrains
Gateway, a database tool that only takes a host and a port) work side by
side. The client's bytes and the SSH server's pass through unchanged; the
platform's diagnostics (stderr frames) go to the log, never into the stream.

Connections are independent: a rejected access key, a missing workspace, a
lost websocket or a client that resets ends that one connection, with one
log line, and the listener carries on. Cancelling ``serve_tcp`` stops
accepting, closes every live websocket with 1000 and every TCP connection,
within ``SHUTDOWN_TIMEOUT``.

    def ready(host: str, port: int) -> None:
        print(f"ssh -p {port} {host}")

    await serve_tcp(endpoint, "demo", port=2222, on_ready=ready)
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..endpoint import Endpoint
from ..errors import LocalStreamClosed, UsageError, WsbridgeError
from ..lifecycle import connect_with_autostart
from ..loglines import parse_line
from ..render import LogView, OutputMode, escape_controls

__all__ = ["OnReady", "format_address", "serve_tcp"]

# How much of a client's input is read ahead before the socket stops being
# read; asyncio pauses the transport at twice this. Matches the stdio proxy.
READ_BUFFER = 64 * 1024

# How long a client gets, once its session is over, to take the last output
# and close its side, before the connection is dropped: a client that
# stopped reading must not keep a finished session alive.
FINISH_TIMEOUT = 5.0

# How long live sessions get to close their websockets (each closing
# handshake is bounded by channel.CLOSE_TIMEOUT) when the listener stops.
SHUTDOWN_TIMEOUT = 5.0

# A platform diagnostic longer than this, or without a newline, is logged
# in pieces so that a stderr stream without newlines cannot grow memory.
MAX_DIAGNOSTIC_LINE = 4096

logger = logging.getLogger("wsbridge.tcp")

# What ``serve_tcp`` calls once it listens: the bound host and port.
OnReady = Callable[[str, int], None]


def format_address(host: str, port: int) -> str:
    """Write ``host`` and ``port`` as ``host:port``, IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_tcp(
    endpoint: Endpoint,
    workspace: str,
    *,
    bind: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    autostart: bool = True,
    verbose: bool = False,
    on_ready: OnReady | None = None,
) -> None:
    """Bridge every connection to ``bind``:``port`` to the workspace's SSH.

    Runs until cancelled. ``port`` 0 picks a free port; ``on_ready`` learns
    the address once the socket listens. With ``autostart``, a connection
    that finds the workspace stopped starts it, with the start log on
    stderr (``verbose`` adds its debug records). A name that resolves to
    several addresses is served on the first.

    Raises:
        UsageError: ``bind`` is not a loopback address and ``allow_remote``
            is false, or it cannot be resolved or listened on (port in use,
            port out of range, address not local).
    """
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is out of range (0 to 65535)")
    address, loopback = await _resolve_bind(bind)
    if not loopback and not allow_remote:
        raise UsageError(
            f"refusing to listen on {bind}: it is not a loopback address, so "
            f"anyone who can reach the port reaches the SSH server of workspace "
            f"{workspace} with your access key (--allow-remote permits it)"
        )

    listener = _Listener(endpoint, workspace, autostart=autostart, verbose=verbose)
    try:
        server = await asyncio.start_server(
            listener.accept, address, port, limit=READ_BUFFER
        )
    except OSError as exc:
        raise UsageError(_listen_error(address, port, exc)) from exc

    try:
        host, bound_port = server.sockets[0].getsockname()[:2]
        where = format_address(host, bound_port)
        if not loopback:
            logger.warning(
                "listening on %s for other machines: anyone who can reach it "
                "reaches workspace %s's SSH with your access key",
                where,
                workspace,
            )
        logger.info(
            "listening on %s for workspace %s (auto-start %s)",
            where,
            workspace,
            "on" if autostart else "off",
        )
        if on_ready is not None:
            on_ready(host, bound_port)
        # Serve until cancelled. Not serve_forever: from Python 3.12 on it
        # waits for every connection to end before its caller can close them.
        await asyncio.get_running_loop().create_future()
    finally:
        server.close()
        await listener.shut_down()


async def _resolve_bind(bind: str) -> tuple[str, bool]:
    """Return the address ``bind`` names and whether every one is loopback."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            bind, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {bind!r}: {exc.strerror}") from exc
    addresses = [str(info[4][0]) for info in infos]
    loopback = all(ipaddress.ip_address(a).is_loopback for a in addresses)
    return addresses[0], loopback


def _listen_error(address: str, port: int, exc: OSError) -> str:
    """Say why listening failed in words a person can act on."""
    where = format_address(address, port)
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use; choose another "
            "with --port (0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied; use a port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no local interface has that address"
    return f"cannot listen on {where}: {exc.strerror or exc}"


class _Listener:
    """The accepted connections of one ``serve_tcp`` and their sessions."""

    def __init__(
        self, endpoint: Endpoint, workspace: str, *, autostart: bool, verbose: bool
    ) -> None:
        self._endpoint = endpoint
        self._workspace = workspace
        self._autostart = autostart
        self._verbose = verbose
        self._live: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._connection_ids = itertools.count(1)
        self._stopping = False

    def accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Start a session for a new connection."""
        if self._stopping:
            writer.transport.abort()
            return
        # A task of our own rather than a coroutine callback: asyncio 3.11
        # reports a cancelled callback task as an error, and shutting down
        # needs the tasks in hand to cancel them.
        session = asyncio.create_task(self._serve(reader, writer))
        self._live[session] = writer
        session.add_done_callback(self._live.pop)

    async def shut_down(self) -> None:
        """Cancel every live session and wait, boundedly, for them to close."""
        self._stopping = True
        sessions = list(self._live)
        if not sessions:
            return
        logger.info("closing %d live connection(s)", len(sessions))
        for session in sessions:
            session.cancel()
        _, stuck = await asyncio.wait(sessions, timeout=SHUTDOWN_TIMEOUT)
        if stuck:
            logger.warning(
                "%d connection(s) did not close within %.0f s; dropping them",
                len(stuck),
                SHUTDOWN_TIMEOUT,
            )
            for session in stuck:
                self._live[session].transport.abort()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Run one connection's session and close the connection after it."""
        log = _ConnectionLog(
            logger, {"connection": f"tcp#{next(self._connection_ids)}"}
        )
        peer = _peer_name(writer)
        log.info("accepted from %s", peer)
        upstream = _CountingSource(reader)
        downstream = _CountingSink(writer)
        started = time.monotonic()
        # Cancellation is the only way out that sets no outcome.
        outcome = "the listener stopped"
        try:
            outcome = await self._bridge(upstream, downstream, log)
            await _finish(reader, writer)
        finally:
            # Closed already, unless the listener is stopping: then the
            # client is dropped at once.
            writer.transport.abort()
            log.info(
                "closed %s: %s after %.1f s, %d bytes from the client, %d to it",
                peer,
                outcome,
                time.monotonic() - started,
                upstream.count,
                downstream.count,
            )

    async def _bridge(
        self, upstream: _CountingSource, downstream: _CountingSink, log: _ConnectionLog
    ) -> str:
        """Connect one client to the workspace's SSH; return how it ended."""
        diagnostics = _DiagnosticLog(log)
        try:
            code = await connect_with_autostart(
                self._endpoint,
                self._workspace,
                upstream,
                downstream,
                diagnostics,
                view=self._start_view(),
            )
        except LocalStreamClosed as exc:
            # The client reset or stopped reading: its own business.
            return f"the client went away ({exc})"
        except WsbridgeError as exc:
            log.warning("%s", exc)
            return "failed"
        except Exception:
            # A bug must not take the listener down with it.
            log.exception("unexpected error")
            return "failed"
        finally:
            diagnostics.write_eof()
        return f"exit code {code}"

    def _start_view(self) -> LogView | None:
        """Return where a workspace start for one connection shows its log."""
        if not self._autostart:
            return None
        # Plain text on stderr: connections start concurrently, and a live
        # progress line each would fight over the terminal. A view per
        # connection, because a view flushes all its sinks when it finishes.
        return LogView(
            OutputMode.PLAIN,
            verbose=self._verbose,
            stdout=sys.stderr,
            stderr=sys.stderr,
        )


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close a client's connection gracefully once its session is over.

    The last output is flushed and followed by a FIN, and what the client
    still sends is read and dropped until it closes too: closing a socket
    with unread input sends a reset, which can destroy output the client
    has not read yet. A client that takes longer than ``FINISH_TIMEOUT``
    is left to the caller to drop.
    """
    try:
        async with asyncio.timeout(FINISH_TIMEOUT):
            if writer.can_write_eof():
                writer.write_eof()
                while await reader.read(READ_BUFFER):
                    pass
            writer.close()
            await writer.wait_closed()
    except (TimeoutError, OSError):
        pass


def _peer_name(writer: asyncio.StreamWriter) -> str:
    """Return the client's address as ``host:port``."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), int(peer[1]))
    return "an unknown peer"


class _ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefix every line with the connection it belongs to."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['connection']}] {msg}", kwargs  # type: ignore[index]


class _CountingSource:
    """The client's side of a connection as a channel's stdin, counted."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.count = 0

    async def read(self, n: int = -1, /) -> bytes:
        """Read up to ``n`` bytes from the client; ``b""`` once it shut down."""
        data = await self._reader.read(n)
        self.count += len(data)
        return data


class _CountingSink:
    """The client's side of a connection as a channel's stdout, counted."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        """Queue ``data`` for the client."""
        self._writer.write(data)
        self.count += len(data)

    async def drain(self) -> None:
        """Wait until the client has taken enough of the queued bytes."""
        await self._writer.drain()

    def can_write_eof(self) -> bool:
        """Tell whether the socket can be shut down for writing."""
        return self._writer.can_write_eof()

    def write_eof(self) -> None:
        """Shut the socket down for writing: the SSH server is done talking."""
        self._writer.write_eof()


class _DiagnosticLog:
    """A channel's stderr sink that logs each line of text as a warning."""

    def __init__(self, log: _ConnectionLog) -> None:
        self._log = log
        self._partial = bytearray()

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        """Log the lines ``data`` completes; keep the rest for later."""
        self._partial += data
        *lines, rest = self._partial.split(b"\n")
        if len(rest) > MAX_DIAGNOSTIC_LINE:
            lines.append(rest)
            rest = bytearray()
        self._partial = rest
        for line in lines:
            self._emit(line)

    async def drain(self) -> None:
        """Return at once: logging does not wait."""

    def can_write_eof(self) -> bool:
        """Say yes: the end of the stream logs a last partial line."""
        return True

    def write_eof(self) -> None:
        """Log what is left, a last line without a newline."""
        rest, self._partial = self._partial, bytearray()
        self._emit(rest)

    def _emit(self, line: bytes | bytearray) -> None:
        """Log one line of the platform's stderr, controls escaped."""
        text = line.decode(errors="replace").rstrip("\r")
        if not text.strip():
            return
        record = parse_line(text)
        message = record.message if record is not None else text
        self._log.warning("workspace: %s", escape_controls(message))

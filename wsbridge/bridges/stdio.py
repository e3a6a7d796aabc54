"""The process's own stdin, stdout and stderr as channel endpoints.

This is the byte path of ``wsbridge proxy``: OpenSSH writes the client's
bytes to our stdin and reads the server's from our stdout. Pipes, sockets
and terminals get non-blocking asyncio transports, so reading and writing
never stall the event loop and a slow reader slows the websocket. A regular
file (``< file`` or ``> file``) cannot be polled, so it is read and written
directly; disk I/O does not block for long.

The standard descriptors are duplicated before asyncio takes them, and
their blocking flags are restored afterwards: they may be shared with the
parent shell, which expects a blocking terminal back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import stat
from collections.abc import AsyncIterator

from ..channel import ByteSink, ByteSource
from ..endpoint import Endpoint
from ..lifecycle import connect_with_autostart
from ..render import LogView

__all__ = ["FileSink", "FileSource", "open_stdio", "run_proxy"]

# How much the stdin reader buffers before it stops reading the pipe; the
# StreamReader pauses its transport at twice this.
STDIN_BUFFER = 64 * 1024

# The kernel buffer asked for on stdin and stdout pipes: Linux's default
# ceiling for unprivileged processes (fs.pipe-max-size).
PIPE_BUFFER = 1024 * 1024

# F_SETPIPE_SZ is Linux-only; Python exposes it from 3.10 on Linux.
_F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)


class FileSource:
    """Read a descriptor that cannot be polled (a regular file) directly."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def read(self, n: int = -1, /) -> bytes:
        """Read up to ``n`` bytes; ``b""`` at end of file."""
        return os.read(self._fd, n if n > 0 else 1 << 16)


class FileSink:
    """Write to a descriptor with plain blocking writes.

    Used for regular files and for stderr, which carries little and must
    still work when it shares a non-blocking terminal with stdout.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        """Write all of ``data``, waiting out a full non-blocking descriptor."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                select.select([], [self._fd], [])
                continue
            view = view[written:]

    async def drain(self) -> None:
        """Return at once: every write has already completed."""

    def can_write_eof(self) -> bool:
        """Say no: the process's own descriptor stays open until exit."""
        return False

    def write_eof(self) -> None:
        """Do nothing; see ``can_write_eof``."""


def _widen_pipe(fd: int) -> None:
    """Grow a pipe's kernel buffer so each wake-up moves more bytes.

    A pipe holds 64 KiB by default; at that size the reader and writer
    take turns waking each other and the copy rate halves. Linux lets an
    unprivileged process grow it to ``/proc/sys/fs/pipe-max-size``.
    """
    if not stat.S_ISFIFO(os.fstat(fd).st_mode) or _F_SETPIPE_SZ is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BUFFER)


def _pollable(fd: int) -> bool:
    """Tell whether asyncio can watch ``fd`` (pipe, socket or terminal).

    Some character devices, ``/dev/null`` among them, refuse to be polled;
    a throwaway registration finds out before asyncio trips over it.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return True
    return stat.S_ISCHR(mode) and _epoll_accepts(fd)


def _epoll_accepts(fd: int) -> bool:
    """Tell whether epoll (asyncio's selector on Linux) can watch ``fd``."""
    epoll_class = getattr(select, "epoll", None)
    if epoll_class is None:
        return True
    with epoll_class() as epoll:
        try:
            epoll.register(fd, select.EPOLLIN)
        except PermissionError:
            return False
    return True


def _is_open(fd: int) -> bool:
    """Tell whether ``fd`` is an open descriptor."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class _EmptySource:
    """Stdin that was closed before we started: immediately at EOF."""

    async def read(self, n: int = -1, /) -> bytes:
        return b""


@contextlib.asynccontextmanager
async def open_stdio(
    stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2
) -> AsyncIterator[tuple[ByteSource, ByteSink, ByteSink]]:
    """Yield stdin, stdout and stderr of this process as channel endpoints.

    On exit, everything written to stdout has been flushed, the asyncio
    transports are closed and the descriptors' flags are as they were.
    """
    loop = asyncio.get_running_loop()
    saved_flags = {
        fd: fcntl.fcntl(fd, fcntl.F_GETFL)
        for fd in (stdin_fd, stdout_fd)
        if _is_open(fd)
    }
    transports: list[asyncio.BaseTransport] = []
    writer: asyncio.StreamWriter | None = None
    try:
        source: ByteSource
        if not _is_open(stdin_fd):
            source = _EmptySource()
        elif _pollable(stdin_fd):
            _widen_pipe(stdin_fd)
            reader = asyncio.StreamReader(limit=STDIN_BUFFER)
            read_pipe = os.fdopen(os.dup(stdin_fd), "rb", buffering=0)
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), read_pipe
            )
            transports.append(read_transport)
            source = reader
        else:
            source = FileSource(stdin_fd)

        sink: ByteSink
        if _pollable(stdout_fd):
            _widen_pipe(stdout_fd)
            # StreamReaderProtocol brings the flow control and close waiter
            # that StreamWriter.drain and wait_closed rely on.
            write_protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
            write_pipe = os.fdopen(os.dup(stdout_fd), "wb", buffering=0)
            write_transport, _ = await loop.connect_write_pipe(
                lambda: write_protocol, write_pipe
            )
            writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
            sink = writer
        else:
            sink = FileSink(stdout_fd)

        yield source, sink, FileSink(stderr_fd)
    finally:
        # Flush stdout before anything else: data owed to the reader must
        # reach it even when the session ended in an error.
        if writer is not None and not writer.is_closing():
            writer.close()
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        for transport in transports:
            transport.close()
        for fd, flags in saved_flags.items():
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)


async def run_proxy(
    endpoint: Endpoint, workspace: str, *, view: LogView | None = None
) -> int:
    """Connect stdin and stdout to the workspace's ``ssh`` stream.

    Nothing but the stream's own bytes is written to stdout; platform
    diagnostics go to stderr. With a ``view`` (whose streams must both be
    stderr), a stopped workspace is started first. Returns the remote exit
    code.
    """
    async with open_stdio() as (stdin, stdout, stderr):
        return await connect_with_autostart(
            endpoint, workspace, stdin, stdout, stderr, view=view
        )

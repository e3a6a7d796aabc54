"""What the emulator's ``ssh`` action talks to, and the pump that feeds it.

Each websocket session of the ``ssh`` action gets one SSH byte stream, an
asyncio reader and writer pair, from a back end:

- ``EmbeddedSsh`` runs an asyncssh server in this process over one end of
  a socket pair. It accepts public keys from ``authorized_keys`` only and
  runs commands, shells (with or without a PTY), the ``sftp`` subsystem and
  ``direct-tcpip`` forwarding to loopback, as the user the emulator runs as.
- ``UpstreamSsh`` opens a TCP connection to a real SSH server per session.

``splice`` moves bytes between the websocket and that stream for both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import posixpath
import pwd
import signal
import socket
import struct
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import asyncssh
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..errors import WsbridgeError
from ..protocol import MAX_PAYLOAD_SIZE, FrameType, Ignored, chunk_frames, decode

__all__ = [
    "EmbeddedSsh",
    "SessionLog",
    "SshBackend",
    "SshBackendUnavailable",
    "SshStream",
    "UpstreamSsh",
    "splice",
]

logger = logging.getLogger("wsbridge.emulator")

# One read from the SSH side fills at most one stdout frame.
SSH_READ_SIZE = MAX_PAYLOAD_SIZE

# How much of a session's input is read from the channel at a time.
STDIN_READ_SIZE = 64 * 1024

# Buffer limit of the stream reader on the SSH side; asyncio pauses the
# socket when twice this much is waiting, which bounds memory per session.
STREAM_LIMIT = 64 * 1024

# How long a closed session waits for the SSH side to wind down before it
# stops waiting and aborts the connection.
SSH_CLOSE_TIMEOUT = 5.0

# After hanging up on a command whose client went away, how long it may take
# to exit before it is killed.
CHILD_EXIT_GRACE = 5.0

# How many bytes of a frame payload a debug line shows.
DEBUG_PAYLOAD_PREVIEW = 32

FALLBACK_SHELL = "/bin/sh"
FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"

# Variables a client may set for its command, as OpenSSH's default AcceptEnv.
ACCEPTED_ENV_PREFIXES = ("LANG", "LC_")

SessionLog = logging.Logger | logging.LoggerAdapter[logging.Logger]
SshStream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class SshBackendUnavailable(WsbridgeError):
    """The SSH server behind the ``ssh`` action cannot be reached."""


class SshBackend(abc.ABC):
    """A source of SSH byte streams, one per ``ssh`` session."""

    @abc.abstractmethod
    def connect(self) -> contextlib.AbstractAsyncContextManager[SshStream]:
        """Open one SSH byte stream; leaving the context closes it.

        Raises:
            SshBackendUnavailable: the SSH server cannot be reached.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """Say in a few words what this back end connects to."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop whatever the back end still runs, at shutdown."""


# The pump shared by both back ends.


async def splice(
    websocket: ServerConnection, stream: SshStream, log: SessionLog
) -> bool:
    """Move bytes between ``websocket`` frames and ``stream`` until one ends.

    Returns True when the SSH side finished (the session should now send its
    exit code) and False when the client went away first.
    """
    reader, writer = stream
    to_ssh = asyncio.create_task(_pump_stdin(websocket, writer, log))
    from_ssh = asyncio.create_task(_pump_stdout(reader, websocket, log))
    try:
        await asyncio.wait({to_ssh, from_ssh}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        to_ssh.cancel()
        from_ssh.cancel()
        await asyncio.gather(to_ssh, from_ssh, return_exceptions=True)

    if from_ssh.cancelled():
        return False
    error = from_ssh.exception()
    if error is None:
        return True
    if not isinstance(error, ConnectionClosed):
        log.error("stdout pump failed", exc_info=error)
    return False


async def _pump_stdin(
    websocket: ServerConnection, writer: asyncio.StreamWriter, log: SessionLog
) -> None:
    """Write stdin frames to the SSH side until the client goes away."""
    stdin_open = True
    try:
        async for message in websocket:
            frame = decode(message)
            if isinstance(frame, Ignored):
                log.debug("skipping a message: %s", frame.reason)
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug("received %s", _describe(frame.type, frame.payload))

            if frame.type is FrameType.STDIN and stdin_open:
                writer.write(frame.payload)
                try:
                    await writer.drain()
                except OSError as exc:
                    # The SSH side is gone; its reader will see the end and
                    # finish the session, so only stop writing here.
                    log.debug("SSH side stopped reading: %s", exc)
                    stdin_open = False
            elif frame.type is FrameType.STDIN_CLOSE and stdin_open:
                stdin_open = False
                if writer.can_write_eof():
                    writer.write_eof()
            else:
                log.debug("skipping a %s frame", frame.type.name)
    except ConnectionClosed:
        pass


async def _pump_stdout(
    reader: asyncio.StreamReader, websocket: ServerConnection, log: SessionLog
) -> None:
    """Send what the SSH side writes as stdout frames until it ends."""
    while True:
        try:
            data = await reader.read(SSH_READ_SIZE)
        except OSError as exc:
            log.debug("SSH side failed: %s", exc)
            return
        if not data:
            return
        for message in chunk_frames(FrameType.STDOUT, data):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("sending %s", _describe(FrameType.STDOUT, message[1:]))
            await websocket.send(message)


def _describe(frame_type: FrameType, payload: bytes | memoryview) -> str:
    """Describe a frame for a debug line, its payload cut short."""
    preview = bytes(payload[:DEBUG_PAYLOAD_PREVIEW])
    more = "..." if len(payload) > DEBUG_PAYLOAD_PREVIEW else ""
    return f"{frame_type.name} frame of {len(payload)} bytes: {preview!r}{more}"


# The upstream back end.


class UpstreamSsh(SshBackend):
    """Splice each session to a TCP connection to a real SSH server."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port

    def describe(self) -> str:
        """Say which SSH server sessions reach."""
        return f"the SSH server at {self._host}:{self._port}"

    async def aclose(self) -> None:
        """Do nothing: every connection closes with its session."""

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[SshStream]:
        """Open a TCP connection to the upstream SSH server."""
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, limit=STREAM_LIMIT
            )
        except OSError as exc:
            raise SshBackendUnavailable(
                f"cannot reach the SSH server at {self._host}:{self._port}: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            yield reader, writer
        finally:
            await _close_writer(writer)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``, ignoring a peer that already went away."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# The embedded back end.


class EmbeddedSsh(SshBackend):
    """Serve each session with an in-process asyncssh server."""

    def __init__(self, host_key: asyncssh.SSHKey, authorized_keys: Path) -> None:
        """Serve with ``host_key``, trusting keys listed in ``authorized_keys``.

        The keys file is read again on every login, so keys appended while
        the emulator runs work at once.
        """
        self._host_key = host_key
        self._authorized_keys = authorized_keys
        self._account = pwd.getpwuid(os.getuid())
        self._connections: set[asyncio.Task[None]] = set()
        self._commands: set[asyncio.Task[None]] = set()

    def describe(self) -> str:
        """Say that sessions reach the embedded server."""
        return "the embedded SSH server"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[SshStream]:
        """Start an SSH server connection on one end of a socket pair."""
        server_end, client_end = socket.socketpair()
        connection = asyncio.create_task(self._serve(server_end))
        self._connections.add(connection)
        connection.add_done_callback(self._connections.discard)
        try:
            reader, writer = await asyncio.open_connection(
                sock=client_end, limit=STREAM_LIMIT
            )
        except BaseException:
            client_end.close()
            connection.cancel()
            raise

        try:
            yield reader, writer
        finally:
            # Closing our end is the SSH server's end of file; give it a
            # moment to notice before cutting it off.
            await _close_writer(writer)
            try:
                async with asyncio.timeout(SSH_CLOSE_TIMEOUT):
                    await asyncio.shield(connection)
            except TimeoutError:
                connection.cancel()

    async def aclose(self) -> None:
        """Abort the SSH connections and commands that are still running."""
        for task in [*self._connections, *self._commands]:
            task.cancel()
        await asyncio.gather(
            *self._connections, *self._commands, return_exceptions=True
        )

    async def _serve(self, sock: socket.socket) -> None:
        """Run one SSH server connection over ``sock`` until it closes."""
        try:
            connection = await asyncssh.run_server(
                sock,
                server_factory=self._new_server,
                server_host_keys=[self._host_key],
                public_key_auth=True,
                password_auth=False,
                kbdint_auth=False,
                host_based_auth=False,
                gss_host=None,
                rdns_lookup=False,
                process_factory=self._run_command,
                sftp_factory=self._new_sftp_server,
                encoding=None,
                line_editor=False,
                agent_forwarding=False,
                x11_forwarding=False,
            )
        except (asyncssh.Error, OSError) as exc:
            sock.close()
            logger.info("SSH connection ended before login: %s", exc)
            return
        except BaseException:
            sock.close()
            raise

        try:
            await connection.wait_closed()
        finally:
            connection.abort()

    def _new_server(self) -> asyncssh.SSHServer:
        """Create the per-connection policy object asyncssh asks."""
        return _EmbeddedServerPolicy(self._authorized_keys)

    def _new_sftp_server(
        self, channel: asyncssh.SSHServerChannel[bytes]
    ) -> asyncssh.SFTPServer:
        """Create an SFTP server rooted, like a login, at the home directory."""
        return _HomeSftpServer(channel, os.fsencode(self._account.pw_dir))

    async def _run_command(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run a session's command or shell and report how it ended."""
        task = asyncio.current_task()
        if task is not None:
            self._commands.add(task)
            task.add_done_callback(self._commands.discard)

        if process.subsystem is not None:
            process.stderr.write(
                f"subsystem {process.subsystem!r} is not supported\n".encode()
            )
            process.exit(1)
            return

        try:
            child = await _start_child(process, self._account)
        except OSError as exc:
            process.stderr.write(f"cannot start the command: {exc}\n".encode())
            process.exit(127)
            return
        await _supervise(process, child)

        # This also runs the clean-ups asyncssh queued for the redirected
        # pipes; left alone they would never be awaited.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SSH_CLOSE_TIMEOUT):
                await process.wait_closed()


class _EmbeddedServerPolicy(asyncssh.SSHServer):
    """Decide who may log in and where forwarded connections may go."""

    def __init__(self, authorized_keys: Path) -> None:
        self._authorized_keys = authorized_keys
        self._connection: asyncssh.SSHServerConnection | None = None
        self._username = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Remember the connection so that its keys can be set per login."""
        self._connection = conn

    def begin_auth(self, username: str) -> bool:
        """Load the authorised keys afresh and demand authentication."""
        assert self._connection is not None
        self._username = username
        try:
            keys = asyncssh.read_authorized_keys(str(self._authorized_keys))
        except (OSError, ValueError) as exc:
            # No usable keys means no key matches: the login is refused.
            logger.warning("no SSH login possible: %s: %s", self._authorized_keys, exc)
        else:
            self._connection.set_authorized_keys(keys)
        return True

    def public_key_auth_supported(self) -> bool:
        """Offer public keys, the only method this server accepts."""
        return True

    def auth_completed(self) -> None:
        """Log the login at the point asyncssh accepts it."""
        logger.info("SSH login as %r accepted", self._username)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        """Allow ``direct-tcpip`` forwarding to loopback destinations only."""
        if _is_loopback(dest_host):
            logger.debug("forwarding to %r port %d", dest_host, dest_port)
            return True
        logger.info("refused forwarding to %r: not loopback", dest_host)
        return False


def _is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine's loopback interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _HomeSftpServer(asyncssh.SFTPServer):
    """An SFTP server that resolves relative paths from the home directory."""

    def __init__(self, channel: asyncssh.SSHServerChannel[bytes], home: bytes) -> None:
        super().__init__(channel)
        self._home = home

    def map_path(self, path: bytes) -> bytes:
        """Resolve ``path`` as a login shell would: relative to home."""
        return posixpath.join(self._home, path)

    def exit(self) -> None:
        """End the session with exit status 0, as OpenSSH's sftp-server does.

        asyncssh closes the channel without a status, which OpenSSH's scp
        reports as a failure.
        """
        self.channel.exit(0)


# Running commands for the embedded back end.


class _Child:
    """A running command and our end of its stdin."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        stdin: int,
        terminal: int | None,
    ) -> None:
        self.process = process
        self.terminal = terminal
        self._stdin: int | None = stdin
        os.set_blocking(stdin, False)

    @property
    def stdin(self) -> int | None:
        """Return the descriptor that feeds the command, None once closed."""
        return self._stdin

    def close_stdin(self) -> None:
        """Close our end of the command's stdin; safe to call twice."""
        if self._stdin is not None:
            os.close(self._stdin)
            self._stdin = None


async def _start_child(
    process: asyncssh.SSHServerProcess[bytes], account: pwd.struct_passwd
) -> _Child:
    """Start the session's command, on a PTY if the client asked for one."""
    shell = account.pw_shell if os.access(account.pw_shell, os.X_OK) else FALLBACK_SHELL
    shell_name = os.path.basename(shell)
    if process.command is None:
        # A leading dash makes it a login shell, as sshd starts it.
        argv = ["-" + shell_name]
    else:
        argv = [shell_name, "-c", process.command]
    environment = _child_environment(process, account, shell)

    if process.term_type is None:
        return await _start_on_pipes(process, shell, argv, environment, account.pw_dir)
    return await _start_on_pty(process, shell, argv, environment, account.pw_dir)


def _child_environment(
    process: asyncssh.SSHServerProcess[bytes],
    account: pwd.struct_passwd,
    shell: str,
) -> dict[str, str]:
    """Build the environment a login by ``account`` would start with."""
    environment = {
        "HOME": account.pw_dir,
        "USER": account.pw_name,
        "LOGNAME": account.pw_name,
        "SHELL": shell,
        "PATH": os.environ.get("PATH", FALLBACK_PATH),
    }
    for source in (os.environ, process.env):
        for name, value in source.items():
            if (
                isinstance(name, str)
                and isinstance(value, str)
                and name.startswith(ACCEPTED_ENV_PREFIXES)
            ):
                environment[name] = value
    if process.term_type is not None:
        environment["TERM"] = process.term_type
    return environment


async def _start_on_pipes(
    process: asyncssh.SSHServerProcess[bytes],
    shell: str,
    argv: list[str],
    environment: dict[str, str],
    home: str,
) -> _Child:
    """Start a command with stdin, stdout and stderr on their own pipes."""
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    child_ends = (stdin_read, stdout_write, stderr_write)
    our_ends = (stdin_write, stdout_read, stderr_read)
    try:
        # A session of its own lets a hang-up reach everything it starts.
        child = await asyncio.create_subprocess_exec(
            *argv,
            executable=shell,
            stdin=stdin_read,
            stdout=stdout_write,
            stderr=stderr_write,
            cwd=home,
            env=environment,
            start_new_session=True,
        )
    except BaseException:
        for descriptor in our_ends:
            os.close(descriptor)
        raise
    finally:
        for descriptor in child_ends:
            os.close(descriptor)

    # asyncssh forwards the output with flow control. The channel's end of
    # file waits until both streams are done (see _wait_for_exit).
    await process.redirect(
        stdout=_open_pipe(stdout_read),
        stderr=_open_pipe(stderr_read),
        send_eof=False,
    )
    return _Child(child, stdin_write, terminal=None)


async def _start_on_pty(
    process: asyncssh.SSHServerProcess[bytes],
    shell: str,
    argv: list[str],
    environment: dict[str, str],
    home: str,
) -> _Child:
    """Start a command on a new PTY that becomes its controlling terminal."""
    primary, secondary = os.openpty()
    try:
        environment["SSH_TTY"] = os.ttyname(secondary)
        _set_window_size(primary, process.term_size)
        child = await asyncio.create_subprocess_exec(
            *argv,
            executable=shell,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            cwd=home,
            env=environment,
            start_new_session=True,
            preexec_fn=_take_controlling_terminal,
        )
    except BaseException:
        os.close(primary)
        raise
    finally:
        os.close(secondary)

    # The PTY's output goes out through asyncssh; its input is written to a
    # second descriptor, so that each direction has one owner.
    terminal_input = os.dup(primary)
    await process.redirect(stdout=_open_pipe(primary), send_eof=False)
    return _Child(child, terminal_input, terminal=terminal_input)


def _open_pipe(descriptor: int) -> IO[bytes]:
    """Wrap ``descriptor`` in an unbuffered reader that owns it."""
    return os.fdopen(descriptor, "rb", buffering=0)


def _set_window_size(descriptor: int, size: tuple[int, int, int, int]) -> None:
    """Give the terminal on ``descriptor`` the client's window size."""
    columns, rows, pixel_width, pixel_height = size
    if columns and rows:
        winsize = struct.pack("HHHH", rows, columns, pixel_width, pixel_height)
        fcntl.ioctl(descriptor, termios.TIOCSWINSZ, winsize)


def _take_controlling_terminal() -> None:
    """Make stdin, the PTY, the controlling terminal of the new session.

    Runs in the child between fork and exec, so job control and ``stty``
    work as they do under sshd.
    """
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def _supervise(process: asyncssh.SSHServerProcess[bytes], child: _Child) -> None:
    """Report the child's exit, or hang up on it if the client leaves first."""
    feeder = asyncio.create_task(_feed_stdin(process, child))
    finished = asyncio.create_task(_wait_for_exit(process, child.process))
    channel_closed = asyncio.create_task(process.channel.wait_closed())
    try:
        await asyncio.wait(
            {finished, channel_closed}, return_when=asyncio.FIRST_COMPLETED
        )
        if finished.done() and finished.exception() is None:
            _report_exit(process, finished.result())
    finally:
        for task in (feeder, finished, channel_closed):
            task.cancel()
        await asyncio.gather(feeder, finished, channel_closed, return_exceptions=True)
        child.close_stdin()
        if child.process.returncode is None:
            await _reap(child.process)


async def _reap(child: asyncio.subprocess.Process) -> None:
    """Hang up on the child and wait for its exit, even through a cancellation.

    Shutting down cancels commands, possibly while one waits for its child.
    A child whose exit asyncio hears of after its loop has closed leaves
    its transport unclosed (a ResourceWarning), so the wait is finished.
    """
    hanging_up = asyncio.ensure_future(_hang_up(child))
    try:
        await asyncio.shield(hanging_up)
    except asyncio.CancelledError:
        await hanging_up
        raise


async def _feed_stdin(process: asyncssh.SSHServerProcess[bytes], child: _Child) -> None:
    """Copy the channel's data to the command; apply resizes and signals.

    asyncssh's own redirection of stdin is not used: asyncio's pipe
    transport can close with data still queued when a resumed writer adds
    data and end of file in one go (seen with CPython 3.11), losing the
    tail of the input. Writing here, with our own waiting, avoids that.
    """
    stdin = child.stdin
    while True:
        try:
            data = await process.stdin.read(STDIN_READ_SIZE)
        except asyncssh.TerminalSizeChanged as change:
            if child.terminal is not None:
                _set_window_size(child.terminal, change.term_size)
            continue
        except asyncssh.SignalReceived as received:
            _forward_signal(child.process, received.signal)
            continue
        except asyncssh.BreakReceived:
            continue
        if not data:
            break
        if stdin is None:
            # The command stopped reading; discard rather than stall the
            # client, as it will not read this anyway.
            continue
        try:
            await _write_all(stdin, data)
        except OSError as exc:
            logger.debug("command stopped reading its input: %s", exc)
            child.close_stdin()
            stdin = None

    # End of file reaches a pipe by closing it; a PTY has no such thing.
    if child.terminal is None:
        child.close_stdin()


async def _write_all(descriptor: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking descriptor, waiting as needed."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(descriptor, view)
        except BlockingIOError:
            await _writable(descriptor)
            continue
        view = view[written:]


async def _writable(descriptor: int) -> None:
    """Wait until ``descriptor`` accepts writes again."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(descriptor, wake)
    try:
        await ready
    finally:
        loop.remove_writer(descriptor)


def _forward_signal(child: asyncio.subprocess.Process, name: str) -> None:
    """Deliver a signal the client sent to the command's process group."""
    number = getattr(signal, f"SIG{name}", None)
    if isinstance(number, signal.Signals):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, number)


async def _wait_for_exit(
    process: asyncssh.SSHServerProcess[bytes], child: asyncio.subprocess.Process
) -> int:
    """Wait until the child exited and all its output went to the channel."""
    returncode = await child.wait()
    await process.stdout.drain()
    await process.stderr.drain()
    process.stdout.write_eof()
    return returncode


def _report_exit(process: asyncssh.SSHServerProcess[bytes], returncode: int) -> None:
    """Send exit-status, or exit-signal for a child a signal ended."""
    if returncode >= 0:
        process.exit(returncode)
        return
    try:
        name = signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        process.exit(128 - returncode)
        return
    process.exit_with_signal(name)


async def _hang_up(child: asyncio.subprocess.Process) -> None:
    """Send SIGHUP to the child's session as sshd does, then SIGKILL if needed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGHUP)
    try:
        async with asyncio.timeout(CHILD_EXIT_GRACE):
            await child.wait()
        return
    except TimeoutError:
        logger.info("command ignored the hang-up; killing it")

    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    await child.wait()

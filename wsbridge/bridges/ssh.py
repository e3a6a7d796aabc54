"""An in-process SSH client over a workspace's ``ssh`` stream.

``wsbridge shell`` and ``wsbridge exec`` need no OpenSSH: asyncssh speaks
SSH over one end of a socket pair, and the other end is bridged to the
websocket exactly as a ``listen`` connection would be (auto-start
included). Keys are tried as OpenSSH tries them: ``-i`` files, then the
ssh agent, then the default key files. Host keys are pinned per server,
project and workspace in wsbridge's own known-hosts file: the first is
recorded with a notice, a changed one is refused, and ``--strict`` refuses
unknown ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from ..channel import ByteSink, ByteSource
from ..endpoint import Endpoint
from ..errors import (
    ConfigError,
    ConnectionLost,
    HostKeyRejected,
    LocalStreamClosed,
    SSHAuthFailed,
)
from ..lifecycle import connect_with_autostart
from ..paths import emulator_client_key, state_dir
from ..render import LogView
from .stdio import FileSink, open_stdio
from .terminal import EscapeFilter, raw_terminal, terminal_size

__all__ = ["HostKeyStore", "run_command", "run_remote", "workspace_ssh"]

logger = logging.getLogger("wsbridge.ssh")

# The key files OpenSSH tries when none is named, in its order.
DEFAULT_KEY_NAMES = (
    "id_rsa",
    "id_ecdsa",
    "id_ecdsa_sk",
    "id_ed25519",
    "id_ed25519_sk",
    "id_dsa",
)

# Bytes read from the local terminal or pipe per write to the channel.
READ_SIZE = 32 * 1024

# Exit status after a disconnect or a lost connection, as OpenSSH uses.
EXIT_DISCONNECTED = 255

# What asyncssh is told it connects to; the socket pair decides where.
_SSH_HOST_LABEL = "workspace"

# How long the SSH handshake over an open websocket may take.
SSH_LOGIN_TIMEOUT = 60.0


class HostKeyStore:
    """wsbridge's known-hosts file: one pinned key per workspace.

    Each line is ``LABEL KEYTYPE BASE64``, where the label names the
    server, project and workspace, since every workspace sits behind the
    same server address.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "known_hosts"

    @staticmethod
    def label(endpoint: Endpoint, workspace: str) -> str:
        """Return the label a workspace's key is filed under."""
        return f"{endpoint.display_host}/{endpoint.project}/{workspace}"

    def lookup(self, label: str) -> asyncssh.SSHKey | None:
        """Return the key pinned for ``label``, if any."""
        for line in self._lines():
            name, _, key_text = line.partition(" ")
            if name == label:
                try:
                    return asyncssh.import_public_key(key_text)
                except (asyncssh.KeyImportError, ValueError) as exc:
                    raise ConfigError(
                        f"{self.path}: unreadable key for {label}: {exc}"
                    ) from None
        return None

    def record(self, label: str, key: asyncssh.SSHKey) -> None:
        """Pin ``key`` for ``label``, replacing nothing else."""
        key_text = key.export_public_key("openssh").decode().split()[:2]
        lines = [line for line in self._lines() if not line.startswith(f"{label} ")]
        lines.append(f"{label} {' '.join(key_text)}")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write("".join(f"{line}\n" for line in lines))

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from exc
        return [line.strip() for line in text.splitlines() if line.strip()]


class _HostKeyCheck(asyncssh.SSHClient):
    """Check the server's host key against the pinned one."""

    def __init__(
        self, store: HostKeyStore, label: str, workspace: str, strict: bool
    ) -> None:
        self._store = store
        self._label = label
        self._workspace = workspace
        self._strict = strict
        self.new_key: asyncssh.SSHKey | None = None
        self.refusal: str | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        known = self._store.lookup(self._label)
        if known is None:
            if self._strict:
                self.refusal = (
                    f"the host key of workspace {self._workspace} is not known "
                    f"({_fingerprint(key)}) and --strict refuses unknown keys"
                )
                return False
            # Pinned only after the login proves the server holds the key.
            self.new_key = key
            return True
        if known == key:
            return True
        self.refusal = (
            f"the host key of workspace {self._workspace} has changed: expected "
            f"{_fingerprint(known)}, got {_fingerprint(key)}. Someone may be "
            "intercepting the connection. If the workspace was recreated, remove "
            f"the line starting with '{self._label} ' from {self._store.path}"
        )
        return False


def _fingerprint(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint()}"


async def _client_keys(
    identity_files: Sequence[Path], endpoint: Endpoint
) -> tuple[list[asyncssh.SSHKeyPair], asyncssh.SSHAgentClient | None]:
    """Collect keys in OpenSSH's order: -i files, agent, default files.

    Returns the open agent too; it must stay open until login is done.
    """
    keys: list[asyncssh.SSHKeyPair] = []
    for path in identity_files:
        try:
            keys.extend(asyncssh.load_keypairs(str(path)))
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"cannot load key {path}: {reason}") from None

    agent: asyncssh.SSHAgentClient | None = None
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = await asyncssh.connect_agent()
            keys.extend(await agent.get_keys())
        except (OSError, asyncssh.Error) as exc:
            logger.info("ssh agent unavailable: %s", exc)

    defaults = [Path.home() / ".ssh" / name for name in DEFAULT_KEY_NAMES]
    emulator_key = emulator_client_key(endpoint.server)
    if emulator_key is not None:
        defaults.append(emulator_key)
    for path in defaults:
        with contextlib.suppress(OSError, asyncssh.KeyImportError, ValueError):
            keys.extend(asyncssh.load_keypairs(str(path), ignore_encrypted=True))
    return keys, agent


@contextlib.asynccontextmanager
async def workspace_ssh(
    endpoint: Endpoint,
    workspace: str,
    *,
    username: str | None = None,
    identity_files: Sequence[Path] = (),
    strict: bool = False,
    view: LogView | None = None,
    host_keys: HostKeyStore | None = None,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Open an SSH connection to ``workspace`` through its ``ssh`` stream.

    Raises:
        HostKeyRejected: the host key changed, or is unknown with ``strict``.
        SSHAuthFailed: the SSH server accepted none of the keys.
        ConnectionFailed: the websocket could not be opened or was lost.
    """
    store = host_keys or HostKeyStore()
    label = HostKeyStore.label(endpoint, workspace)
    checker = _HostKeyCheck(store, label, workspace, strict)
    keys, agent = await _client_keys(identity_files, endpoint)
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    bridge = asyncio.create_task(
        connect_with_autostart(
            endpoint, workspace, reader, writer, FileSink(2), view=view
        )
    )
    bridge.add_done_callback(lambda _: writer.close())
    connection: asyncssh.SSHClientConnection | None = None
    try:
        connection = await _login(
            bridge, ours, checker, username or getpass.getuser(), keys
        )
        if checker.new_key is not None:
            store.record(label, checker.new_key)
            print(
                f"wsbridge: recorded the host key of workspace {workspace} "
                f"({_fingerprint(checker.new_key)}) in {store.path}",
                file=sys.stderr,
            )
        try:
            yield connection
        except (asyncssh.Error, ConnectionError) as exc:
            # ConnectionError: writing to a session whose transport has gone
            # (the server died mid-upload) raises a reset, not an SSH error.
            # The SSH session broke under the command; when the websocket
            # failed first, its error says why.
            _raise_bridge_failure(bridge)
            raise ConnectionLost(
                f"the SSH session to the workspace ended: {exc}"
            ) from exc
    finally:
        if agent is not None:
            agent.close()
        if connection is not None:
            connection.close()
            with contextlib.suppress(Exception):
                await connection.wait_closed()
        ours.close()
        bridge.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await bridge


async def _login(
    bridge: asyncio.Task[int],
    sock: socket.socket,
    checker: _HostKeyCheck,
    username: str,
    keys: list[asyncssh.SSHKeyPair],
) -> asyncssh.SSHClientConnection:
    """Run the SSH handshake, unless the websocket side fails first."""
    login = asyncio.ensure_future(
        asyncssh.connect(
            # The name only labels the connection: the socket is already open,
            # and no ssh config is read (config=None).
            _SSH_HOST_LABEL,
            sock=sock,
            config=None,
            username=username,
            client_factory=lambda: checker,
            # An empty trusted list (not None) makes asyncssh ask the
            # checker about every host key.
            known_hosts=([], [], []),
            client_keys=keys,
            agent_path=None,
            password=None,
            kbdint_auth=False,
            login_timeout=SSH_LOGIN_TIMEOUT,
        )
    )
    try:
        await asyncio.wait({bridge, login}, return_when=asyncio.FIRST_COMPLETED)
        if not login.done():
            # The websocket ended before SSH got going: its error says why.
            bridge.result()
            raise ConnectionLost("the workspace's SSH stream ended during login")
        return login.result()
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyRejected(checker.refusal or str(exc)) from None
    except asyncssh.PermissionDenied:
        raise SSHAuthFailed(
            f"the workspace's SSH server refused every key offered as user "
            f"{username!r} ({len(keys)} tried); use -i KEYFILE or -l USER"
        ) from None
    except (asyncssh.Error, OSError) as exc:
        _raise_bridge_failure(bridge)
        raise ConnectionLost(f"SSH to the workspace failed: {exc}") from None
    finally:
        if not login.done():
            login.cancel()


def _raise_bridge_failure(bridge: asyncio.Task[int]) -> None:
    """Raise the websocket side's error, if it has already failed."""
    if bridge.done() and not bridge.cancelled():
        failure = bridge.exception()
        if failure is not None:
            raise failure from None


async def run_remote(
    connection: asyncssh.SSHClientConnection,
    command: str | None,
    *,
    pty: bool,
) -> int:
    """Run ``command`` (or a login shell) with local stdin, stdout, stderr.

    With ``pty`` the local terminal is put in raw mode, resizes are
    forwarded and ``~.`` after a newline disconnects. Returns the remote
    exit status (128 + signal number when killed by a signal, 255 when the
    connection went away), as OpenSSH does.
    """
    term_size = terminal_size() if pty else None
    process = await connection.create_process(
        command,
        term_type=os.environ.get("TERM", "xterm-256color") if pty else None,
        term_size=term_size,
        request_pty="force" if pty else False,
        encoding=None,
    )
    loop = asyncio.get_running_loop()
    async with open_stdio() as (stdin, stdout, stderr):
        with raw_terminal() if pty else contextlib.nullcontext():
            if pty:
                loop.add_signal_handler(
                    signal.SIGWINCH,
                    lambda: process.change_terminal_size(*terminal_size()),
                )
            try:
                disconnected = await _pump(process, stdin, stdout, stderr, pty)
            finally:
                if pty:
                    loop.remove_signal_handler(signal.SIGWINCH)
    if disconnected:
        print("\r\nwsbridge: connection closed (~.)", file=sys.stderr)
        return EXIT_DISCONNECTED
    # Checked first: asyncssh reports an exit status of -1 after a signal.
    if process.exit_signal is not None:
        name = process.exit_signal[0]
        number = getattr(signal, f"SIG{name}", None)
        return 128 + int(number) if number is not None else EXIT_DISCONNECTED
    if process.exit_status is not None:
        return process.exit_status
    return EXIT_DISCONNECTED


async def _pump(
    process: asyncssh.SSHClientProcess[bytes],
    stdin: ByteSource,
    stdout: ByteSink,
    stderr: ByteSink,
    escapes: bool,
) -> bool:
    """Move bytes until the remote side is done; True after ``~.``."""
    escape_filter = EscapeFilter() if escapes else None

    async def upload() -> bool:
        while True:
            data = await stdin.read(READ_SIZE)
            if not data:
                process.stdin.write_eof()
                return False
            if escape_filter is not None:
                filtered = escape_filter.feed(data)
                if filtered.echo:
                    stderr.write(filtered.echo)
                data = filtered.send
                if filtered.disconnect:
                    process.stdin.write(data)
                    return True
            process.stdin.write(data)
            await process.stdin.drain()

    async def download(
        source: asyncssh.SSHReader[bytes], sink: ByteSink, name: str
    ) -> None:
        while data := await source.read(READ_SIZE):
            try:
                sink.write(data)
                await sink.drain()
            except (ConnectionError, OSError) as exc:
                raise LocalStreamClosed(f"local {name} was closed: {exc}") from exc

    up = asyncio.create_task(upload())
    down = asyncio.gather(
        download(process.stdout, stdout, "stdout"),
        download(process.stderr, stderr, "stderr"),
    )
    try:
        tasks: set[asyncio.Future[Any]] = {up, down}
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if up in done and up.exception() is None and up.result():
            return True
        await down
        await process.wait_closed()
        return False
    finally:
        up.cancel()
        down.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(up, down)


async def run_command(
    endpoint: Endpoint,
    workspace: str,
    command: str | None,
    *,
    pty: bool,
    username: str | None = None,
    identity_files: Sequence[Path] = (),
    strict: bool = False,
    view: LogView | None = None,
) -> int:
    """Log in to ``workspace`` and run ``command`` (None: a login shell)."""
    async with workspace_ssh(
        endpoint,
        workspace,
        username=username,
        identity_files=identity_files,
        strict=strict,
        view=view,
    ) as connection:
        return await run_remote(connection, command, pty=pty)

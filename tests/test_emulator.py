"""Tests of the emulator against real clients: websockets, asyncssh, OpenSSH.

Every test starts a real emulator on 127.0.0.1 port 0 in the test's event
loop and talks to it over real sockets. SSH tests run an asyncssh client,
or the OpenSSH client with a small ProxyCommand, over the ``ssh`` action.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import hashlib
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from wsbridge.emulator import (
    LISTENING_PREFIX,
    EmulatorSettings,
    run_emulator,
    start_detached,
    stop_detached,
)
from wsbridge.emulator import server as emulator_server
from wsbridge.emulator.state import HOST_KEY_ALIAS, prepare_state
from wsbridge.errors import ConfigError, UsageError
from wsbridge.protocol import (
    MAX_MESSAGE_SIZE,
    MAX_PAYLOAD_SIZE,
    FrameType,
    Ignored,
    decode,
    encode,
)

# Ceiling for one step of a test; pytest-timeout (120 s) is the backstop.
STEP_TIMEOUT = 30.0

ACTION_PATH = (
    "/kubernetes/management/apis/management.loft.sh/v1/namespaces/loft-p-{project}"
    "/devpodworkspaceinstances/{workspace}/{action}"
)

# Seconds a lifecycle action's log takes here: short, but long enough that
# its bursts are paced rather than sent at once.
LIFECYCLE_DELAY = 0.05

# Messages a conforming server must skip without ending the session.
NOISE_MESSAGES = (b"", b"\x09not a frame type", encode(FrameType.STDOUT, b"wrong way"))


@dataclass
class Emulator:
    """A running emulator and what a client needs to reach it."""

    url: str
    state_dir: Path
    access_key: str = field(repr=False)

    def action_url(
        self,
        action: str,
        workspace: str = "demo",
        project: str = "default",
        query: str = "",
    ) -> str:
        """Return the websocket URL of ``action`` on ``workspace``."""
        path = ACTION_PATH.format(project=project, workspace=workspace, action=action)
        return self.url + path + (f"?{query}" if query else "")

    @property
    def headers(self) -> dict[str, str]:
        """Return the headers that carry the access key."""
        return {"Authorization": f"Bearer {self.access_key}"}


@asynccontextmanager
async def running_emulator(settings: EmulatorSettings) -> AsyncIterator[Emulator]:
    """Run ``run_emulator`` in this loop until the context ends."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_emulator(settings, ready.set_result))
    starting: list[asyncio.Future[Any]] = [ready, task]
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        key_file = settings.access_key_file or settings.state_dir / "access_key"
        yield Emulator(ready.result(), settings.state_dir, key_file.read_text().strip())
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            async with asyncio.timeout(STEP_TIMEOUT):
                await task


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    """Serve workspaces ``demo`` and ``other`` with the embedded SSH server."""
    settings = EmulatorSettings(
        state_dir=tmp_path / "state",
        port=0,
        workspaces=["demo", "other"],
        lifecycle_delay=LIFECYCLE_DELAY,
    )
    async with running_emulator(settings) as running:
        yield running


@dataclass
class Outcome:
    """Everything one session sent back."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    frame_types: list[FrameType] = field(default_factory=list)


async def run_action(
    url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None = None
) -> Outcome:
    """Run one action to its exit code and collect its output."""
    outcome = Outcome()
    async with asyncio.timeout(STEP_TIMEOUT):
        async with connect(
            url, additional_headers=headers, compression=None, ssl=ssl_context
        ) as websocket:
            async for message in websocket:
                frame = decode(message)
                assert not isinstance(frame, Ignored)
                outcome.frame_types.append(frame.type)
                if frame.type is FrameType.STDOUT:
                    outcome.stdout += frame.payload
                elif frame.type is FrameType.STDERR:
                    outcome.stderr += frame.payload
                elif frame.type is FrameType.EXIT_CODE:
                    outcome.exit_code = frame.exit_code
                    break
    return outcome


async def handshake_status(url: str, headers: dict[str, str]) -> int:
    """Return the HTTP status with which the server refuses the upgrade."""
    with pytest.raises(InvalidStatus) as refused:
        async with asyncio.timeout(STEP_TIMEOUT):
            async with connect(url, additional_headers=headers):
                pass
    return refused.value.response.status_code


# SSH over the websocket, for asyncssh clients.


@dataclass
class Tunnel:
    """The websocket side of an SSH connection carried by the ``ssh`` action."""

    websocket: ClientConnection
    exit_code: asyncio.Task[int | None]


async def _socket_to_websocket(
    reader: asyncio.StreamReader, websocket: ClientConnection
) -> None:
    """Send what the SSH client writes as stdin frames, noise first."""
    for noise in NOISE_MESSAGES:
        await websocket.send(noise)
    while data := await reader.read(MAX_PAYLOAD_SIZE):
        await websocket.send(encode(FrameType.STDIN, data))
    await websocket.send(encode(FrameType.STDIN_CLOSE))


async def _websocket_to_socket(
    websocket: ClientConnection, writer: asyncio.StreamWriter
) -> int | None:
    """Write stdout frames to the SSH client; return the exit code."""
    try:
        async for message in websocket:
            frame = decode(message)
            assert not isinstance(frame, Ignored)
            assert len(message) <= MAX_MESSAGE_SIZE
            if frame.type is FrameType.STDOUT:
                writer.write(frame.payload)
                await writer.drain()
            elif frame.type is FrameType.STDOUT_CLOSE:
                writer.write_eof()
            elif frame.type is FrameType.EXIT_CODE:
                return frame.exit_code
        return None
    finally:
        writer.close()


@asynccontextmanager
async def ssh_session(
    emulator: Emulator, client_key: Path | asyncssh.SSHKey | None = None
) -> AsyncIterator[tuple[asyncssh.SSHClientConnection, Tunnel]]:
    """Log in with an asyncssh client over one ``ssh`` action session."""
    ssh_end, pump_end = socket.socketpair()
    async with AsyncExitStack() as cleanup:
        try:
            websocket = await cleanup.enter_async_context(
                connect(
                    emulator.action_url("ssh"),
                    additional_headers=emulator.headers,
                    compression=None,
                )
            )
            reader, writer = await asyncio.open_connection(sock=pump_end)
        except BaseException:
            # Until asyncssh and the pump own the socket pair, we do.
            ssh_end.close()
            pump_end.close()
            raise
        stdin_pump = asyncio.create_task(_socket_to_websocket(reader, websocket))
        exit_code = asyncio.create_task(_websocket_to_socket(websocket, writer))
        tunnel = Tunnel(websocket, exit_code)
        try:
            key = client_key or emulator.state_dir / "client_key"
            async with asyncssh.connect(
                HOST_KEY_ALIAS,
                sock=ssh_end,
                config=None,
                known_hosts=str(emulator.state_dir / "known_hosts"),
                client_keys=[key],
                agent_path=None,
                username=getpass.getuser(),
            ) as connection:
                yield connection, tunnel
        finally:
            # The SSH client is gone: let its end of file reach the server so
            # that the session finishes with an exit code.
            with suppress(TimeoutError):
                async with asyncio.timeout(STEP_TIMEOUT):
                    await asyncio.wait({exit_code})
            stdin_pump.cancel()
            exit_code.cancel()
            await asyncio.gather(stdin_pump, exit_code, return_exceptions=True)


# The HTTP upgrade: access key and routes.


async def test_missing_access_key_is_refused_with_401(emulator: Emulator) -> None:
    """An upgrade without any access key gets 401 and no websocket."""
    assert await handshake_status(emulator.action_url("get-status"), {}) == 401


async def test_wrong_bearer_key_is_refused_with_401(emulator: Emulator) -> None:
    """A bearer token that is not the access key gets 401."""
    headers = {"Authorization": "Bearer not-the-key"}
    assert await handshake_status(emulator.action_url("get-status"), headers) == 401


async def test_wrong_cookie_key_is_refused_with_401(emulator: Emulator) -> None:
    """A cookie that is not the access key gets 401."""
    headers = {"Cookie": "loft_access_key=not-the-key"}
    assert await handshake_status(emulator.action_url("get-status"), headers) == 401


async def test_cookie_with_the_access_key_is_accepted(emulator: Emulator) -> None:
    """The browser's way, the ``loft_access_key`` cookie, opens a session."""
    headers = {"Cookie": f"theme=dark; loft_access_key={emulator.access_key}"}
    outcome = await run_action(emulator.action_url("get-status"), headers)
    assert outcome.exit_code == 0


async def test_ssh_to_a_workspace_that_never_existed_is_refused_with_404(
    emulator: Emulator,
) -> None:
    """``ssh`` to a name the emulator has never had gets 404."""
    url = emulator.action_url("ssh", workspace="nope")
    assert await handshake_status(url, emulator.headers) == 404


async def test_unknown_action_is_refused_with_404(emulator: Emulator) -> None:
    """An action outside the protocol gets 404."""
    url = emulator.action_url("reboot")
    assert await handshake_status(url, emulator.headers) == 404


async def test_unknown_path_is_refused_with_404(emulator: Emulator) -> None:
    """A path outside the API layout gets 404."""
    assert await handshake_status(emulator.url + "/healthz", emulator.headers) == 404


# Lifecycle actions.


@pytest.mark.parametrize("action", ["get-status", "getstatus"])
async def test_status_prints_the_workspace_status_object(
    emulator: Emulator, action: str
) -> None:
    """Both status action names print one JSON status line and exit 0."""
    url = emulator.action_url(
        action,
        workspace="other",
        project="team-a",
        query='options={"containerStatus":true}&debug=false',
    )
    outcome = await run_action(url, emulator.headers)

    assert outcome.stdout == (
        b'{"id":"other","context":"default","provider":"emulator","state":"Running"}\n'
    )
    assert outcome.exit_code == 0
    assert outcome.frame_types[-1] is FrameType.EXIT_CODE


@pytest.mark.parametrize("action", ["up", "stop", "delete"])
async def test_lifecycle_actions_stream_json_log_lines(
    emulator: Emulator, action: str
) -> None:
    """``up``, ``stop`` and ``delete`` stream JSON log lines and exit 0."""
    url = emulator.action_url(action, query="options=%7B%7D&webMode=true&debug=true")
    outcome = await run_action(url, emulator.headers)

    output = outcome.stdout + outcome.stderr
    lines = [json.loads(line) for line in output.decode().splitlines()]
    assert len(lines) >= 2
    for line in lines:
        assert set(line) == {"time", "message", "level"}
        assert line["time"].endswith("Z")
    assert {line["level"] for line in lines} >= {"debug", "info"}
    assert outcome.exit_code == 0


async def test_options_that_are_not_json_fail_with_exit_code_2(
    emulator: Emulator,
) -> None:
    """Malformed ``options`` are reported on stderr with exit code 2."""
    outcome = await run_action(
        emulator.action_url("up", query="options=%7Bnot-json"), emulator.headers
    )
    assert b"invalid options" in outcome.stderr
    assert outcome.exit_code == 2


async def test_session_closes_itself_if_the_client_never_closes(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the exit code the server waits briefly, then closes with 1000."""
    monkeypatch.setattr(emulator_server, "CLIENT_CLOSE_GRACE", 0.2)
    async with asyncio.timeout(STEP_TIMEOUT):
        async with connect(
            emulator.action_url("get-status"), additional_headers=emulator.headers
        ) as websocket:
            frames = [decode(message) async for message in websocket]
    exit_frame = frames[-1]
    assert not isinstance(exit_frame, Ignored)
    assert exit_frame.type is FrameType.EXIT_CODE
    assert websocket.close_code == 1000


# The ssh action with the embedded SSH server.


async def test_ssh_runs_a_command_and_returns_its_exit_status(
    emulator: Emulator,
) -> None:
    """A command's output and exit status cross the websocket intact."""
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, tunnel):
            result = await connection.run("echo hi; exit 7")
        assert result.stdout == "hi\n"
        assert result.exit_status == 7
        assert await tunnel.exit_code == 0


async def test_ssh_refuses_a_key_it_does_not_know(emulator: Emulator) -> None:
    """A key missing from authorized_keys cannot log in."""
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    async with asyncio.timeout(STEP_TIMEOUT):
        with pytest.raises(asyncssh.PermissionDenied):
            async with ssh_session(emulator, stranger):
                pass


async def test_ssh_accepts_a_key_appended_while_running(emulator: Emulator) -> None:
    """authorized_keys is read on every login, so new keys work at once."""
    newcomer = asyncssh.generate_private_key("ssh-ed25519")
    with (emulator.state_dir / "authorized_keys").open("ab") as authorized:
        authorized.write(newcomer.export_public_key())

    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator, newcomer) as (connection, _):
            result = await connection.run("pwd")
    assert result.stdout == pwd.getpwuid(os.getuid()).pw_dir + "\n"


async def test_ssh_reports_the_signal_that_killed_a_command(
    emulator: Emulator,
) -> None:
    """A command killed by a signal ends with exit-signal, not a status."""
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, _):
            result = await connection.run("kill -TERM $$")
    assert result.exit_signal is not None
    assert result.exit_signal[0] == "TERM"


async def test_ssh_shell_request_starts_a_login_shell(emulator: Emulator) -> None:
    """A session without a command runs the user's shell as a login shell."""
    shell = os.path.basename(pwd.getpwuid(os.getuid()).pw_shell)
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, _):
            result = await connection.run(input="echo $0; pwd; exit 5\n")
    assert str(result.stdout).splitlines()[-2:] == [
        f"-{shell}",
        pwd.getpwuid(os.getuid()).pw_dir,
    ]
    assert result.exit_status == 5


async def test_ssh_passes_stdin_and_its_end(emulator: Emulator) -> None:
    """Input reaches the command and its end lets ``cat`` finish."""
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, _):
            result = await connection.run("cat; echo done", input="line one\n")
    assert result.stdout == "line one\ndone\n"
    assert result.exit_status == 0


async def test_ssh_moves_32_mib_of_binary_data_both_ways(emulator: Emulator) -> None:
    """32 MiB of every byte value go through ``cat`` and back unchanged."""
    data = os.urandom(32 * 1024 * 1024)
    async with asyncio.timeout(90):
        async with ssh_session(emulator) as (connection, _):
            result = await connection.run("cat", input=data, encoding=None)
    assert isinstance(result.stdout, bytes)
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


async def test_ssh_pty_is_the_controlling_terminal_with_the_asked_size(
    emulator: Emulator,
) -> None:
    """With a PTY, the command sees a terminal of the client's type and size."""
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, _):
            result = await connection.run(
                "stty size; echo $TERM; tty; ps -o tty= -p $$",
                term_type="xterm-256color",
                term_size=(100, 40),
            )
    size, term, tty, controlling = str(result.stdout).split("\r\n")[:4]
    assert size == "40 100"
    assert term == "xterm-256color"
    assert tty.startswith("/dev/pts/")
    assert tty.endswith(controlling.strip())
    assert result.exit_status == 0


async def test_ssh_window_change_reaches_the_pty(emulator: Emulator) -> None:
    """A window-change request resizes the PTY the command runs on."""
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, _):
            process = await connection.create_process(
                "stty size; read line; stty size",
                term_type="xterm",
                term_size=(80, 24),
            )
            assert (await process.stdout.readline()).strip() == "24 80"
            process.change_terminal_size(132, 50)
            process.stdin.write("\n")
            await process.stdout.readline()
            assert (await process.stdout.readline()).strip() == "50 132"
            await process.wait()


async def test_ssh_sftp_subsystem_starts_in_the_home_directory(
    emulator: Emulator, tmp_path: Path
) -> None:
    """SFTP, which modern scp uses, works and resolves ``.`` to home."""
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(100_000))
    async with asyncio.timeout(STEP_TIMEOUT):
        async with (
            ssh_session(emulator) as (connection, _),
            connection.start_sftp_client() as sftp,
        ):
            assert await sftp.realpath(".") == pwd.getpwuid(os.getuid()).pw_dir
            await sftp.put(str(source), str(tmp_path / "uploaded.bin"))
    assert (tmp_path / "uploaded.bin").read_bytes() == source.read_bytes()


async def test_ssh_forwards_tcp_to_loopback(emulator: Emulator) -> None:
    """``direct-tcpip`` (ssh -L, -D, -W) reaches a loopback port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = echo_server.sockets[0].getsockname()[1]
    async with (
        echo_server,
        asyncio.timeout(STEP_TIMEOUT),
        ssh_session(emulator) as (connection, _),
    ):
        reader, writer = await connection.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.read() == b"ping"
        writer.close()


async def test_ssh_refuses_forwarding_beyond_loopback(emulator: Emulator) -> None:
    """``direct-tcpip`` to another host is refused."""
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, _):
            with pytest.raises(asyncssh.ChannelOpenError):
                await connection.open_connection("192.0.2.1", 22)


async def test_client_going_away_hangs_up_the_command(emulator: Emulator) -> None:
    """When the websocket closes, the SSH side closes and the command ends."""
    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, tunnel):
            process = await connection.create_process("echo $$; exec sleep 600")
            pid = int(await process.stdout.readline())
            pidfd = os.pidfd_open(pid)
            await tunnel.websocket.close()
            await wait_for_exit(pidfd)
            process.close()


async def wait_for_exit(pidfd: int) -> None:
    """Wait until the process behind ``pidfd`` has exited."""
    exited = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, exited.set_result, None)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def test_stopping_the_emulator_closes_live_sessions(tmp_path: Path) -> None:
    """Cancelling ``run_emulator`` closes open sessions and returns."""
    settings = EmulatorSettings(state_dir=tmp_path / "state", port=0)
    async with asyncio.timeout(STEP_TIMEOUT):
        async with running_emulator(settings) as running:
            websocket = await connect(
                running.action_url("ssh"), additional_headers=running.headers
            )
        await websocket.wait_closed()
    assert websocket.close_code == 1001


# The ssh action with an upstream SSH server.


class _UpstreamServer(asyncssh.SSHServer):
    """An upstream SSH server that lets anyone in."""

    def begin_auth(self, username: str) -> bool:
        return False


async def test_ssh_upstream_splices_to_another_ssh_server(tmp_path: Path) -> None:
    """With ssh_upstream, sessions reach that server and known_hosts has its key."""
    upstream_key = asyncssh.generate_private_key("ssh-ed25519")

    def answer(process: asyncssh.SSHServerProcess[str]) -> None:
        process.stdout.write(f"upstream ran {process.command}\n")
        process.exit(3)

    upstream = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[upstream_key],
        server_factory=_UpstreamServer,
        process_factory=answer,
    )
    port = upstream.sockets[0].getsockname()[1]
    settings = EmulatorSettings(
        state_dir=tmp_path / "state", port=0, ssh_upstream=("127.0.0.1", port)
    )
    try:
        async with asyncio.timeout(STEP_TIMEOUT), running_emulator(settings) as running:
            known_hosts = (running.state_dir / "known_hosts").read_bytes()
            assert upstream_key.export_public_key().split()[1] in known_hosts
            async with ssh_session(running) as (connection, tunnel):
                result = await connection.run("true")
            assert result.stdout == "upstream ran true\n"
            assert result.exit_status == 3
            assert await tunnel.exit_code == 0
    finally:
        upstream.close()
        await upstream.wait_closed()


SSHD = Path("/usr/sbin/sshd")


@asynccontextmanager
async def running_sshd(directory: Path, authorized_keys: Path) -> AsyncIterator[int]:
    """Run OpenSSH's sshd on a free loopback port; yield the port."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key_path = directory / "sshd_host_key"
    host_key.write_private_key(host_key_path)
    host_key_path.chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {host_key_path}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PidFile none\n"
    )
    sshd = await asyncio.create_subprocess_exec(
        str(SSHD), "-D", "-e", "-f", str(config), stderr=subprocess.PIPE
    )
    try:
        assert sshd.stderr is not None
        async with asyncio.timeout(STEP_TIMEOUT):
            while b"Server listening" not in await sshd.stderr.readline():
                assert sshd.returncode is None
        yield port
    finally:
        sshd.terminate()
        await sshd.communicate()


@pytest.mark.skipif(
    not SSHD.exists() or shutil.which("ssh") is None or os.getuid() != 0,
    reason="needs OpenSSH's sshd and client, and root to run sshd",
)
async def test_openssh_reaches_an_upstream_sshd(tmp_path: Path) -> None:
    """ssh -> emulator -> sshd: OpenSSH on both ends of the splice."""
    state_dir = tmp_path / "state"
    prepare_state(state_dir)
    async with running_sshd(tmp_path, state_dir / "authorized_keys") as port:
        settings = EmulatorSettings(
            state_dir=state_dir, port=0, ssh_upstream=("127.0.0.1", port)
        )
        async with running_emulator(settings) as running:
            argv = openssh_argv(running, tmp_path, "demo", "echo via sshd; exit 0")
            assert await run_command(argv) == b"via sshd\n"


async def test_ssh_upstream_that_is_down_is_reported_on_stderr(tmp_path: Path) -> None:
    """An unreachable upstream gives a message on stderr and exit code 255."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    settings = EmulatorSettings(
        state_dir=tmp_path / "state", port=0, ssh_upstream=("127.0.0.1", port)
    )
    async with running_emulator(settings) as running:
        outcome = await run_action(running.action_url("ssh"), running.headers)
    assert b"cannot reach the SSH server" in outcome.stderr
    assert outcome.exit_code == 255


# The state directory.


async def test_state_directory_is_created_with_private_files(
    emulator: Emulator,
) -> None:
    """Keys and the access key are created 0600; the client key is authorised."""
    state = emulator.state_dir
    for name in ("access_key", "ssh_host_ed25519_key", "client_key", "authorized_keys"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert len(emulator.access_key) >= 40
    client_public = (state / "client_key.pub").read_text().split()[1]
    assert client_public in (state / "authorized_keys").read_text()


def test_existing_keys_are_kept_and_read(tmp_path: Path) -> None:
    """A second start reuses the access key and keys; whitespace is stripped."""
    key_file = tmp_path / "my key"
    key_file.write_text("  s3cret-key \n")
    first = prepare_state(tmp_path / "state", key_file)
    second = prepare_state(tmp_path / "state", key_file)

    assert first.access_key == second.access_key == "s3cret-key"
    assert first.host_key.export_public_key() == second.host_key.export_public_key()
    assert "s3cret" not in repr(first)
    assert key_file.read_text() == "  s3cret-key \n"


def test_empty_access_key_file_is_a_config_error(tmp_path: Path) -> None:
    """An empty key file is refused with a message naming it."""
    key_file = tmp_path / "access_key"
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        prepare_state(tmp_path / "state", key_file)


async def test_ssh_config_lets_openssh_resolve_the_workspace(
    emulator: Emulator,
) -> None:
    """OpenSSH reads the generated config: proxy, key, user and host key alias."""
    config = emulator.state_dir / "ssh_config"
    resolved = await run_command(["ssh", "-G", "-F", str(config), "demo"])
    settings = dict(
        line.split(" ", 1) for line in resolved.decode().splitlines() if " " in line
    )

    assert emulator.url in settings["proxycommand"]
    assert settings["proxycommand"].endswith(" %n")
    assert settings["identityfile"] == str(emulator.state_dir / "client_key")
    assert settings["user"] == getpass.getuser()
    assert settings["hostkeyalias"] == HOST_KEY_ALIAS
    assert settings["stricthostkeychecking"] == "true"

    known_hosts = (emulator.state_dir / "known_hosts").read_text().split()
    assert known_hosts[:2] == [HOST_KEY_ALIAS, "ssh-ed25519"]


async def run_command(argv: list[str], stdin: bytes = b"") -> bytes:
    """Run ``argv`` to completion and return its stdout; fail on exit != 0."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(STEP_TIMEOUT):
        stdout, stderr = await process.communicate(stdin)
    assert process.returncode == 0, stderr.decode()
    return stdout


# OpenSSH through the generated config, with a stand-in ProxyCommand.

# A minimal stdio-to-websocket pump in place of ``wsbridge proxy``.
_PROXY_SCRIPT = """\
import os, sys, threading
from websockets.sync.client import connect

url, key_file, workspace = sys.argv[1:4]
path = ("/kubernetes/management/apis/management.loft.sh/v1/namespaces/"
        "loft-p-default/devpodworkspaceinstances/" + workspace + "/ssh")
key = open(key_file).read().strip()
headers = {"Authorization": "Bearer " + key}
with connect(url + path, additional_headers=headers, compression=None) as ws:
    def send_stdin():
        while data := os.read(0, 32767):
            ws.send(b"\\x04" + data)
        ws.send(b"\\x05")
    threading.Thread(target=send_stdin, daemon=True).start()
    for message in ws:
        if message[0] == 0:
            sys.stdout.buffer.write(message[1:])
            sys.stdout.buffer.flush()
        elif message[0] == 6:
            break
"""


def openssh_argv(emulator: Emulator, tmp_path: Path, *arguments: str) -> list[str]:
    """Return an OpenSSH command using the generated config and a test proxy."""
    script = tmp_path / "proxy.py"
    script.write_text(_PROXY_SCRIPT)
    proxy = (
        f'"{sys.executable}" "{script}" {emulator.url} '
        f'"{emulator.state_dir / "access_key"}" %n'
    )
    return [
        "ssh",
        "-F",
        str(emulator.state_dir / "ssh_config"),
        "-o",
        f"ProxyCommand={proxy}",
        "-o",
        "BatchMode=yes",
        *arguments,
    ]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
async def test_openssh_runs_a_command_with_the_generated_config(
    emulator: Emulator, tmp_path: Path
) -> None:
    """``ssh -F ssh_config demo CMD`` works: key, user and host key all match."""
    argv = openssh_argv(emulator, tmp_path, "demo", "echo hello; tty || true")
    assert await run_command(argv) == b"hello\nnot a tty\n"


@pytest.mark.skipif(shutil.which("scp") is None, reason="needs the OpenSSH client")
async def test_openssh_scp_copies_a_file_over_sftp(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Modern scp (SFTP underneath) copies a file through the emulator."""
    source = tmp_path / "with space.bin"
    source.write_bytes(os.urandom(300_000))
    target = tmp_path / "copied.bin"
    argv = openssh_argv(emulator, tmp_path)
    argv[0] = "scp"
    await run_command([*argv, str(source), f"demo:{target}"])
    assert target.read_bytes() == source.read_bytes()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
async def test_openssh_forced_tty_gets_a_pty(
    emulator: Emulator, tmp_path: Path
) -> None:
    """``ssh -tt`` runs the command on a PTY."""
    argv = openssh_argv(emulator, tmp_path, "-tt", "demo", "tty")
    assert (await run_command(argv)).startswith(b"/dev/pts/")


# TLS, bad settings and the background process.


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a certificate and key for 127.0.0.1; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_serves_wss(tmp_path: Path) -> None:
    """With a certificate and key the emulator speaks wss://."""
    cert, key = _self_signed_certificate(tmp_path)
    settings = EmulatorSettings(
        state_dir=tmp_path / "state", port=0, tls_cert=cert, tls_key=key
    )
    client_tls = ssl.create_default_context(cafile=str(cert))
    async with running_emulator(settings) as running:
        assert running.url.startswith("wss://127.0.0.1:")
        outcome = await run_action(
            running.action_url("get-status"), running.headers, client_tls
        )
    assert outcome.exit_code == 0


async def test_unreadable_tls_key_is_a_config_error(tmp_path: Path) -> None:
    """A TLS key that cannot be loaded fails with a message naming it."""
    cert, _ = _self_signed_certificate(tmp_path)
    settings = EmulatorSettings(
        state_dir=tmp_path / "state",
        port=0,
        tls_cert=cert,
        tls_key=tmp_path / "missing.pem",
    )
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        await run_emulator(settings, lambda url: None)


async def test_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    """A busy port fails with advice instead of a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = EmulatorSettings(
            state_dir=tmp_path / "state", port=busy.getsockname()[1]
        )
        with pytest.raises(UsageError, match="in use"):
            await run_emulator(settings, lambda url: None)


async def test_invalid_workspace_name_is_a_usage_error(tmp_path: Path) -> None:
    """Workspace names follow DevPod's rule."""
    settings = EmulatorSettings(state_dir=tmp_path, port=0, workspaces=["Not_OK"])
    with pytest.raises(UsageError, match="Not_OK"):
        await run_emulator(settings, lambda url: None)


# Runs the emulator as the CLI will: the listening line first, then serve.
_FOREGROUND_SCRIPT = """\
import asyncio, sys
from pathlib import Path
from wsbridge.emulator import LISTENING_PREFIX, EmulatorSettings, run_emulator

def ready(url):
    print(LISTENING_PREFIX + url, flush=True)

asyncio.run(run_emulator(EmulatorSettings(Path(sys.argv[1]), port=0), ready))
"""


def _foreground_argv(state_dir: Path) -> list[str]:
    """Return a command that runs the emulator in the foreground."""
    return [sys.executable, "-c", _FOREGROUND_SCRIPT, str(state_dir)]


@pytest.fixture
def source_on_pythonpath(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let child interpreters import this checkout of wsbridge."""
    root = str(Path(__file__).resolve().parents[1])
    existing = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", root + (os.pathsep + existing if existing else ""))
    yield


@pytest.mark.usefixtures("source_on_pythonpath")
def test_sigterm_ends_the_emulator_with_exit_status_0(tmp_path: Path) -> None:
    """SIGTERM shuts the emulator down cleanly: status 0, no traceback."""
    child = subprocess.Popen(
        _foreground_argv(tmp_path / "state"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().decode().startswith(LISTENING_PREFIX)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=STEP_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert b"Traceback" not in stderr


@pytest.mark.usefixtures("source_on_pythonpath")
def test_detached_emulator_starts_once_and_stops(tmp_path: Path) -> None:
    """start_detached reuses a running emulator; stop_detached ends it."""
    state_dir = tmp_path / "state"
    settings = EmulatorSettings(state_dir=state_dir, port=0)
    url = start_detached(settings, _foreground_argv(state_dir))
    try:
        assert url.startswith("ws://127.0.0.1:")
        pid = int((state_dir / "emulator.pid").read_text().split()[0])
        assert start_detached(settings, _foreground_argv(state_dir)) == url
        assert int((state_dir / "emulator.pid").read_text().split()[0]) == pid
    finally:
        assert stop_detached(state_dir)
    assert not (state_dir / "emulator.pid").exists()
    assert not stop_detached(state_dir)


@pytest.mark.usefixtures("source_on_pythonpath")
def test_detached_emulator_that_fails_reports_why(tmp_path: Path) -> None:
    """A background emulator that cannot start surfaces its error line."""
    state_dir = tmp_path / "state"
    failing = [sys.executable, "-c", "import sys; sys.exit('port 1 is in use')"]
    with pytest.raises(UsageError, match="port 1 is in use"):
        start_detached(EmulatorSettings(state_dir=state_dir), failing)

"""``wsbridge listen``: many SSH clients through one local TCP port.

End-to-end tests run the listener as a user does (a child process on port 0,
its address read from the line it prints) in front of the emulator spliced
to a real sshd, and drive it with OpenSSH. In-process tests run
``serve_tcp`` against a fault-injecting peer to see what reaches the TCP
stream, the log and the websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wsbridge.bridges.tcp import serve_tcp
from wsbridge.errors import UsageError
from wsbridge.settings import ConnectionSettings

from .emulator import DEFAULT_WORKSPACE, Emulator, EmulatorFactory, write_access_key
from .faulty_peer import FaultyPeer, hold_open, play, stderr_frame, stdout_frame
from .openssh import OpenSSH, write_known_hosts
from .procs import (
    START_TIMEOUT,
    ProcessFailed,
    ServerProcess,
    run_command,
    scaled,
)
from .sshd import LOOPBACK, Sshd, public_key_line

# What the listener prints first; scripts and these tests read the port.
_LISTENING = re.compile(
    rf"wsbridge listening on 127\.0\.0\.1:(\d+) \(workspace {DEFAULT_WORKSPACE}\)"
)

# The -v line the listener logs when a connection has been closed.
_CLOSED = re.compile(r"\[tcp#\d+\] closed 127\.0\.0\.1:\d+: ")

# Twenty clients each send 4 MiB through a remote ``cat`` and read it back.
CLIENTS = 20
ECHO_SIZE = 4 * 1024 * 1024

# Clients that find the workspace stopped, all at once.
AUTOSTART_CLIENTS = 3

# Sessions that keep going while another one is killed.
SURVIVORS = 5

# sshd drops new connections at random once ten are still logging in (its
# MaxStartups default, 10:30:100); fewer than that may log in at once.
LOGIN_SLOTS = 8

# Bytes read from a client's output at a time.
CHUNK = 256 * 1024

# 160 MiB through two Python processes on two cores, with twenty logins.
TRANSFER_TIMEOUT = 90.0

# A listener that is told to stop, or a client cut off by it.
EXIT_TIMEOUT = 15.0

# A few frames over loopback.
PEER_TIMEOUT = 10.0

# A CLI run that fails before it connects anywhere.
CLI_TIMEOUT = 30.0

# Never contacted: the commands under test fail before they connect.
UNUSED_SERVER = "ws://127.0.0.1:9"


@dataclass
class Listener:
    """A running ``wsbridge listen`` and the port it prints."""

    process: ServerProcess
    port: int
    emulator: Emulator


def listen_argv(server: str, access_key_file: Path, *options: str) -> list[str]:
    """Return the argv of ``wsbridge listen -v`` for the demo workspace."""
    return [
        sys.executable,
        "-m",
        "wsbridge",
        "listen",
        "--server",
        server,
        "--access-key-file",
        str(access_key_file),
        "-v",
        *options,
        DEFAULT_WORKSPACE,
    ]


@pytest.fixture
def listener(
    emulator_factory: EmulatorFactory, sshd: Sshd, openssh: OpenSSH
) -> Iterator[Listener]:
    """Run ``wsbridge listen`` on port 0 before an emulator spliced to sshd."""
    emulator = emulator_factory(ssh_upstream=sshd.address)
    write_known_hosts(openssh.known_hosts, public_key_line(sshd.host_key))
    process = ServerProcess(
        "listen", listen_argv(emulator.url, emulator.access_key_file)
    )
    try:
        first_line = process.stdout.wait_for_first_line(START_TIMEOUT)
        listening = _LISTENING.fullmatch(first_line)
        if listening is None:
            raise ProcessFailed(f"unexpected first stdout line {first_line!r}")
        yield Listener(process, int(listening.group(1)), emulator)
    finally:
        process.stop()
        # Shown under "Captured stdout teardown" when a test fails.
        print(process.output())
    assert "Traceback" not in process.stderr.tail(), process.output()


class EchoSession:
    """An ssh client that sends random bytes through a remote ``cat``."""

    def __init__(self, argv: Sequence[str], size: int) -> None:
        self.argv = list(argv)
        self.payload = os.urandom(size)
        self.half_echoed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None

    async def run(
        self, resume: asyncio.Event, login_slots: asyncio.Semaphore
    ) -> tuple[int, bool, bytes]:
        """Send half, wait for ``resume``, send the rest.

        Returns ssh's exit status, whether the echo matched the bytes sent,
        and ssh's stderr.
        """
        half = len(self.payload) // 2
        # A login is over once ssh has taken half the input from its pipe.
        async with login_slots:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert self.process.stderr is not None
            echo = asyncio.create_task(self._receive())
            errors = asyncio.create_task(self.process.stderr.read())
            sent = await self._send(self.payload[:half])
        if sent:
            await resume.wait()
            await self._send(self.payload[half:], close=True)
        digest = await echo
        stderr = await errors
        status = await self.process.wait()
        return status, digest == hashlib.sha256(self.payload).hexdigest(), stderr

    async def _send(self, data: bytes, *, close: bool = False) -> bool:
        """Write ``data`` to ssh; tell whether ssh took it all."""
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            await self.process.stdin.drain()
            if close:
                self.process.stdin.close()
        except ConnectionError:
            return False
        return True

    async def _receive(self) -> str:
        """Hash what comes back; note when half of it has arrived."""
        assert self.process is not None and self.process.stdout is not None
        digest = hashlib.sha256()
        received = 0
        while chunk := await self.process.stdout.read(CHUNK):
            digest.update(chunk)
            received += len(chunk)
            if received >= len(self.payload) // 2:
                self.half_echoed.set()
        return digest.hexdigest()

    async def stop(self) -> None:
        """Kill ssh if it still runs and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def reaped(sessions: Sequence[EchoSession]) -> AsyncIterator[None]:
    """Make sure no ssh client outlives the test."""
    try:
        yield
    finally:
        for session in sessions:
            await session.stop()


async def wait_for_log(listener: Listener, pattern: str | re.Pattern[str]) -> str:
    """Wait for the listener to log a line matching ``pattern``; return it."""
    match = await asyncio.to_thread(
        listener.process.stderr.wait_for, re.compile(pattern), EXIT_TIMEOUT
    )
    return match.string


def echo_argv(openssh: OpenSSH, listener: Listener) -> list[str]:
    """Return ssh to the listener's port running ``cat``."""
    return openssh.ssh(LOOPBACK, "cat", port=listener.port)


# --- many OpenSSH sessions through one listener -----------------------------


async def test_twenty_concurrent_sessions_each_echo_4_mib_intact(
    listener: Listener, openssh: OpenSSH
) -> None:
    """Twenty ssh clients at once each get their 4 MiB back byte for byte."""
    sessions = [
        EchoSession(echo_argv(openssh, listener), ECHO_SIZE) for _ in range(CLIENTS)
    ]
    resume = asyncio.Event()
    resume.set()
    slots = asyncio.Semaphore(LOGIN_SLOTS)

    async with reaped(sessions), asyncio.timeout(scaled(TRANSFER_TIMEOUT)):
        results = await asyncio.gather(*(s.run(resume, slots) for s in sessions))

    for status, intact, stderr in results:
        assert status == 0, stderr
        assert intact
    for number in range(1, CLIENTS + 1):
        closed = await wait_for_log(listener, rf"\[tcp#{number}\] closed ")
        assert ": exit code 0 after " in closed


async def test_killing_one_client_leaves_the_other_sessions_intact(
    listener: Listener, openssh: OpenSSH
) -> None:
    """An ssh client killed mid-transfer does not disturb the sessions beside it."""
    argv = echo_argv(openssh, listener)
    survivors = [EchoSession(argv, ECHO_SIZE) for _ in range(SURVIVORS)]
    victim = EchoSession(argv, ECHO_SIZE)
    resume_survivors = asyncio.Event()
    resume_victim = asyncio.Event()
    slots = asyncio.Semaphore(LOGIN_SLOTS)

    async with reaped([*survivors, victim]), asyncio.timeout(scaled(TRANSFER_TIMEOUT)):
        running = [
            asyncio.create_task(s.run(resume_survivors, slots)) for s in survivors
        ]
        victim_run = asyncio.create_task(victim.run(resume_victim, slots))
        # Every session is halfway through when the victim dies.
        for session in [*survivors, victim]:
            await session.half_echoed.wait()
        assert victim.process is not None
        victim.process.kill()
        resume_victim.set()
        await victim_run
        # The listener has dealt with the victim before the others go on.
        await wait_for_log(listener, _CLOSED)

        resume_survivors.set()
        results = await asyncio.gather(*running)

    for status, intact, stderr in results:
        assert status == 0, stderr
        assert intact
    assert listener.process.popen.poll() is None
    for number in range(1, SURVIVORS + 2):
        await wait_for_log(listener, rf"\[tcp#{number}\] closed ")


async def test_sigterm_closes_live_sessions_and_exits_143(
    listener: Listener, openssh: OpenSSH
) -> None:
    """SIGTERM ends the listener with 143 and cuts its live ssh session off."""
    session = EchoSession(echo_argv(openssh, listener), 64 * 1024)
    never = asyncio.Event()

    async with reaped([session]), asyncio.timeout(scaled(TRANSFER_TIMEOUT)):
        running = asyncio.create_task(session.run(never, asyncio.Semaphore()))
        await session.half_echoed.wait()

        listener.process.popen.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(
            listener.process.popen.wait, scaled(EXIT_TIMEOUT)
        )
        never.set()
        ssh_status, _, _ = await running

    assert status == 128 + signal.SIGTERM
    assert ssh_status == 255
    listener.process.stderr.join(EXIT_TIMEOUT)
    log = "\n".join(listener.process.stderr.lines)
    assert "Traceback" not in log
    # The websocket was closed (with 1000) and the TCP connection after it.
    assert re.search(r"\[ssh#\d+ demo\] closed after", log), log
    assert re.search(r"\[tcp#\d+\] closed .*: the listener stopped", log), log


async def test_connections_to_a_stopped_workspace_start_it_and_get_through(
    listener: Listener, openssh: OpenSSH
) -> None:
    """Clients that arrive while the workspace is stopped all get a session."""
    emulator = listener.emulator
    stop = [sys.executable, "-m", "wsbridge", "stop", "--server", emulator.url]
    stop += ["--access-key-file", str(emulator.access_key_file), DEFAULT_WORKSPACE]
    stopped = run_command(stop, CLI_TIMEOUT)
    assert stopped.returncode == 0, stopped.stderr

    async def hello(number: int) -> tuple[int, bytes, bytes]:
        argv = openssh.ssh(LOOPBACK, f"echo hello {number}", port=listener.port)
        ssh = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await ssh.communicate()
        finally:
            if ssh.returncode is None:
                ssh.kill()
                await ssh.wait()
        assert ssh.returncode is not None
        return ssh.returncode, stdout, stderr

    async with asyncio.timeout(scaled(TRANSFER_TIMEOUT)):
        results = await asyncio.gather(*(hello(n) for n in range(AUTOSTART_CLIENTS)))

    for number, (status, stdout, stderr) in enumerate(results):
        assert status == 0, stderr
        assert stdout == f"hello {number}\n".encode()
    log = "\n".join(listener.process.stderr.lines)
    assert f"workspace {DEFAULT_WORKSPACE} is stopped; starting it" in log


# --- refusing to listen -----------------------------------------------------


def test_non_loopback_bind_is_refused_without_allow_remote(tmp_path: Path) -> None:
    """``--bind 0.0.0.0`` exits 2 with one line naming the risk and the way out."""
    key_file = write_access_key(tmp_path / "key")

    result = run_command(
        listen_argv(UNUSED_SERVER, key_file, "--bind", "0.0.0.0"), CLI_TIMEOUT
    )

    assert result.returncode == 2
    assert result.stdout == b""
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("wsbridge: refusing to listen on 0.0.0.0")
    assert "access key" in line
    assert "--allow-remote" in line


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.1", "localhost.invalid"])
async def test_serve_tcp_refuses_addresses_beyond_loopback(
    tmp_path: Path, bind: str
) -> None:
    """Wildcards, foreign addresses and unknown names are refused before binding."""
    endpoint = ConnectionSettings(
        server=UNUSED_SERVER, access_key_file=write_access_key(tmp_path / "key")
    ).resolve()

    with pytest.raises(UsageError):
        await serve_tcp(endpoint, DEFAULT_WORKSPACE, bind=bind)


def test_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    """A port someone else listens on exits 2 with one line saying so."""
    key_file = write_access_key(tmp_path / "key")

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_command(
            listen_argv(UNUSED_SERVER, key_file, "--port", str(port)), CLI_TIMEOUT
        )

    assert result.returncode == 2
    [line] = result.stderr.decode().splitlines()
    assert "in use" in line


# --- one connection's troubles stay its own ---------------------------------


class _Records(logging.Handler):
    """Collect the records of one logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    async def wait_for(self, fragment: str) -> str:
        """Wait until a message containing ``fragment`` is logged; return it."""
        async with asyncio.timeout(scaled(PEER_TIMEOUT)):
            while True:
                for record in self.records:
                    if fragment in (message := record.getMessage()):
                        return message
                self._changed.clear()
                await self._changed.wait()

    def messages(self, level: int) -> list[str]:
        """Return the messages logged at ``level``."""
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def tcp_log() -> Iterator[_Records]:
    """Collect what ``wsbridge.tcp`` logs, whatever the CLI did to its parents."""
    tcp_logger = logging.getLogger("wsbridge.tcp")
    handler = _Records()
    previous = tcp_logger.level
    tcp_logger.addHandler(handler)
    tcp_logger.setLevel(logging.DEBUG)
    yield handler
    tcp_logger.removeHandler(handler)
    tcp_logger.setLevel(previous)


@contextlib.asynccontextmanager
async def serving(peer: FaultyPeer, tmp_path: Path) -> AsyncIterator[int]:
    """Run ``serve_tcp`` against ``peer`` without auto-start; yield its port."""
    endpoint = ConnectionSettings(
        server=peer.url, access_key_file=write_access_key(tmp_path / "key")
    ).resolve()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_tcp(
            endpoint,
            DEFAULT_WORKSPACE,
            autostart=False,
            on_ready=lambda host, port: ready.set_result(port),
        )
    )
    waiters: list[asyncio.Future[Any]] = [ready, server]
    try:
        async with asyncio.timeout(scaled(START_TIMEOUT)):
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()
        yield ready.result()
        assert not server.done(), "the listener stopped on its own"
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(scaled(EXIT_TIMEOUT)):
                await server


async def read_to_end(port: int, send: bytes = b"") -> bytes:
    """Connect to ``port``, send ``send``, and read until the listener closes."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(send)
        async with asyncio.timeout(scaled(PEER_TIMEOUT)):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_platform_diagnostics_go_to_the_log_not_the_stream(
    tmp_path: Path, tcp_log: _Records
) -> None:
    """Stderr frames become WARNING log lines; only stdout reaches the client."""
    banner = b"SSH-2.0-peer\r\n"
    frames = [
        stderr_frame(b"workspace demo is \x1b[31mnot\n running"),
        stdout_frame(banner),
    ]

    with FaultyPeer(play(frames, 0)) as peer:
        async with serving(peer, tmp_path) as port:
            received = await read_to_end(port)
            closed = await tcp_log.wait_for("] closed ")

    assert received == banner
    warnings = tcp_log.messages(logging.WARNING)
    assert any(
        re.fullmatch(r"\[tcp#\d+\] workspace: workspace demo is \\x1b\[31mnot", w)
        for w in warnings
    ), warnings
    assert any(w.endswith("workspace:  running") for w in warnings), warnings
    assert re.search(
        rf"exit code 0 .* 0 bytes from the client, {len(banner)} to it", closed
    )


async def test_failed_connections_are_closed_and_the_listener_carries_on(
    tmp_path: Path, tcp_log: _Records
) -> None:
    """A 404 for one connection closes it with one warning; the next still works."""
    with FaultyPeer(play([], 0), not_found={"ssh"}) as peer:
        async with serving(peer, tmp_path) as port:
            first = await read_to_end(port, b"SSH-2.0-client\r\n")
            second = await read_to_end(port)
            await tcp_log.wait_for("[tcp#2] closed ")

    assert first == second == b""
    warnings = tcp_log.messages(logging.WARNING)
    assert len(warnings) == 2, warnings
    assert all("not found" in w for w in warnings)


async def test_cancelling_closes_live_websockets_with_1000(
    tmp_path: Path, tcp_log: _Records
) -> None:
    """Stopping the listener closes a live session's websocket with 1000 and its TCP."""
    with FaultyPeer(hold_open([stdout_frame(b"hello")])) as peer:
        async with serving(peer, tmp_path) as port:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            async with asyncio.timeout(scaled(PEER_TIMEOUT)):
                assert await reader.readexactly(5) == b"hello"
        # Leaving ``serving`` cancelled the listener.
        async with asyncio.timeout(scaled(PEER_TIMEOUT)):
            rest = await reader.read()
        writer.close()
        assert await asyncio.to_thread(peer.wait_finished, PEER_TIMEOUT)

    assert rest == b""
    assert peer.outcome.client_close_code == 1000
    assert any("the listener stopped" in m for m in tcp_log.messages(logging.INFO))

"""``wsbridge exec`` against the emulator: exit codes, streams, keys, host keys.

wsbridge runs as a child process, as a user runs it. HOME points at an empty
directory so that only the keys a test names are offered, and wsbridge's
known-hosts file lives in the test's own XDG state directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

from .emulator import DEFAULT_WORKSPACE, Emulator, start_emulator
from .procs import START_TIMEOUT, ServerProcess, run_command, scaled
from .remote import remote_argv
from .sshd import generate_key

# Python start-up, the websocket and the SSH handshake on a loaded machine.
EXEC_TIMEOUT = 60.0

BLOB_SIZE = 8 * 1024 * 1024

_AGENT_SOCKET = re.compile(r"SSH_AUTH_SOCK=([^;]+);")


@pytest.fixture(scope="module")
def emulator(
    tmp_path_factory: pytest.TempPathFactory, user_key: Path
) -> Iterator[Emulator]:
    """Run one emulator for the tests that do not stop it or need a new one.

    Starting one per test would double the time these tests take; each test
    still has its own wsbridge known-hosts file.
    """
    started = start_emulator(tmp_path_factory.mktemp("exec") / "state")
    started.authorize(Path(f"{user_key}.pub"))
    yield started
    crashed = started.process.popen.poll() is not None
    started.stop()
    assert not crashed, f"the emulator exited early:\n{started.process.output()}"


def known_hosts_path() -> Path:
    """Return wsbridge's known-hosts file under this test's XDG state dir."""
    return Path(os.environ["XDG_STATE_HOME"]) / "wsbridge" / "known_hosts"


def run_exec(
    emulator: Emulator,
    command: str,
    *,
    options: Sequence[str | Path] = (),
    stdin: bytes = b"",
) -> subprocess.CompletedProcess[bytes]:
    """Run ``wsbridge exec`` with ``stdin`` piped in; return its outcome."""
    return subprocess.run(
        remote_argv("exec", emulator, [command], options=options),
        input=stdin,
        capture_output=True,
        timeout=scaled(EXEC_TIMEOUT),
    )


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    """Return the non-empty lines wsbridge wrote to stderr."""
    return [line for line in result.stderr.decode().splitlines() if line.strip()]


# Exit status, streams and stdin.


def test_exec_exits_with_the_remote_exit_status(
    emulator: Emulator, user_key: Path
) -> None:
    """The remote command's exit status 0, 1 or 42 is wsbridge's own."""
    statuses = [
        run_exec(emulator, f"exit {code}", options=["-i", user_key]).returncode
        for code in (0, 1, 42)
    ]
    assert statuses == [0, 1, 42]


def test_exec_reports_a_remote_signal_as_128_plus_its_number(
    emulator: Emulator, user_key: Path
) -> None:
    """A remote command killed by SIGTERM makes wsbridge exit 143, as a shell."""
    result = run_exec(emulator, "kill -TERM $$", options=["-i", user_key])
    assert result.returncode == 128 + signal.SIGTERM


def test_exec_whose_stdout_reader_quits_exits_255_without_a_traceback(
    emulator: Emulator, user_key: Path
) -> None:
    """Closing the pipe wsbridge writes to ends it cleanly, without a traceback."""
    argv = remote_argv("exec", emulator, ["yes"], options=["-i", user_key])
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.read(2) == b"y\n"
        process.stdout.close()
        status = process.wait(scaled(EXEC_TIMEOUT))
        errors = process.stderr.read().decode()
    assert status == 255
    assert errors.splitlines()[-1].startswith("wsbridge: local stdout was closed")
    assert "Traceback" not in errors


def test_exec_exits_255_with_one_line_when_the_server_goes_away(
    tmp_path: Path, user_key: Path
) -> None:
    """An emulator shutting down mid-command ends wsbridge with 255, no traceback."""
    status, errors = exec_while_the_server_goes(
        tmp_path, user_key, "exec sleep 600", lambda emulator, _: emulator.stop()
    )
    assert status == 255
    assert errors.splitlines()[-1].startswith("wsbridge: ")
    assert "Traceback" not in errors


def test_exec_exits_255_when_the_server_dies_during_an_upload(
    tmp_path: Path, user_key: Path
) -> None:
    """Killing the server while stdin streams up gives 255 and one line."""

    def kill_while_uploading(emulator: Emulator, stdin: IO[bytes]) -> None:
        threading.Thread(target=_feed_forever, args=(stdin,), daemon=True).start()
        emulator.process.popen.kill()

    status, errors = exec_while_the_server_goes(
        tmp_path, user_key, "exec cat > /dev/null", kill_while_uploading
    )
    assert status == 255, errors
    assert "Traceback" not in errors
    assert errors.splitlines()[-1].startswith("wsbridge: ")


def exec_while_the_server_goes(
    tmp_path: Path,
    user_key: Path,
    command: str,
    end_server: Callable[[Emulator, IO[bytes]], object],
) -> tuple[int, str]:
    """Run ``command`` by exec, call ``end_server`` once it runs; return the end.

    Returns wsbridge's exit status and what it wrote to stderr.
    """
    emulator = start_emulator(tmp_path / "emulator" / "state")
    try:
        emulator.authorize(Path(f"{user_key}.pub"))
        argv = remote_argv(
            "exec", emulator, [f"echo started; {command}"], options=["-i", user_key]
        )
        with subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdin and process.stdout and process.stderr
            assert process.stdout.readline() == b"started\n"
            end_server(emulator, process.stdin)
            status = process.wait(scaled(EXEC_TIMEOUT))
            errors = process.stderr.read().decode()
    finally:
        emulator.stop()
    return status, errors


def _feed_forever(stream: IO[bytes]) -> None:
    """Write to ``stream`` until the reader goes away."""
    with contextlib.suppress(OSError, ValueError):
        while True:
            stream.write(b"x" * 65536)


def test_exec_moves_8_mib_through_cat_byte_for_byte(
    emulator: Emulator, user_key: Path
) -> None:
    """Random binary data piped through a remote ``cat`` comes back unchanged."""
    blob = os.urandom(BLOB_SIZE)
    result = run_exec(emulator, "cat", options=["-i", user_key], stdin=blob)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == BLOB_SIZE
    assert result.stdout == blob


def test_exec_keeps_stdout_and_stderr_apart(emulator: Emulator, user_key: Path) -> None:
    """Remote stdout reaches local stdout only, remote stderr local stderr only."""
    command = "echo to-stdout; echo to-stderr >&2; exit 5"
    result = run_exec(emulator, command, options=["-i", user_key])
    assert result.returncode == 5
    assert result.stdout == b"to-stdout\n"
    assert stderr_lines(result)[-1] == "to-stderr"
    assert b"to-stdout" not in result.stderr


def test_exec_forwards_the_end_of_stdin(emulator: Emulator, user_key: Path) -> None:
    """``wc -c`` reading piped stdin finishes, so the remote saw end of file."""
    result = run_exec(emulator, "wc -c", options=["-i", user_key], stdin=b"hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"5"


def test_exec_with_stdin_closed_sees_end_of_input(
    emulator: Emulator, user_key: Path
) -> None:
    """With fd 0 closed (``<&-``) the remote command reads EOF, not a hang."""
    argv = remote_argv("exec", emulator, ["cat"], options=["-i", user_key])
    result = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *argv],
        capture_output=True,
        timeout=scaled(EXEC_TIMEOUT),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""


def test_exec_without_a_command_is_a_usage_error() -> None:
    """``exec`` with nothing after the workspace exits 2 with one line."""
    result = run_command(
        [sys.executable, "-m", "wsbridge", "exec", DEFAULT_WORKSPACE], EXEC_TIMEOUT
    )
    assert result.returncode == 2
    assert result.stderr.decode().startswith("wsbridge: exec needs a command")


# Client keys.


def test_unauthorised_key_fails_with_one_line_and_255(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A -i key the server does not accept exits 255 with a one-line message."""
    stranger = generate_key(tmp_path / "stranger")
    result = run_exec(emulator, "echo ran", options=["-i", stranger])
    assert result.returncode == 255
    assert result.stdout == b""
    error = stderr_lines(result)[-1]
    assert error.startswith("wsbridge: ")
    assert "refused every key" in error
    assert b"Traceback" not in result.stderr


def test_missing_key_file_is_a_one_line_usage_error(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A -i file that does not exist exits 2 and names the file."""
    missing = tmp_path / "no-such-key"
    result = run_exec(emulator, "echo ran", options=["-i", missing])
    assert result.returncode == 2
    assert stderr_lines(result) == [
        f"wsbridge: cannot load key {missing}: No such file or directory"
    ]


def test_default_key_in_home_ssh_is_offered(
    emulator: Emulator, user_key: Path, empty_home: Path
) -> None:
    """Without -i, ~/.ssh/id_ed25519 is tried, as OpenSSH tries it."""
    (empty_home / ".ssh").mkdir(mode=0o700)
    shutil.copy(user_key, empty_home / ".ssh" / "id_ed25519")
    result = run_exec(emulator, "echo default-key")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"default-key\n"


def test_ssh_agent_key_is_offered(
    emulator: Emulator,
    user_key: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without -i, a key held by the ssh agent in SSH_AUTH_SOCK is used."""
    agent = ServerProcess(
        "ssh-agent", ["ssh-agent", "-D", "-a", tmp_path / "agent.sock"]
    )
    try:
        socket_path = agent.stdout.wait_for(_AGENT_SOCKET, START_TIMEOUT).group(1)
        monkeypatch.setenv("SSH_AUTH_SOCK", socket_path)
        added = run_command(["ssh-add", "-q", user_key], EXEC_TIMEOUT)
        assert added.returncode == 0, added.stderr
        result = run_exec(emulator, "echo agent-key")
    finally:
        agent.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"agent-key\n"


# Host keys.


def test_first_connection_records_the_host_key_with_one_notice(
    emulator: Emulator, user_key: Path
) -> None:
    """The first key is pinned in a 0600 file, announced once, then trusted."""
    first = run_exec(emulator, "true", options=["-i", user_key])
    second = run_exec(emulator, "true", options=["-i", user_key])

    assert first.returncode == 0, first.stderr
    (notice,) = stderr_lines(first)
    assert notice.startswith("wsbridge: recorded the host key of workspace demo")
    assert str(known_hosts_path()) in notice

    port = emulator.url.rsplit(":", 1)[1]
    label = f"127.0.0.1:{port}/default/{DEFAULT_WORKSPACE}"
    assert known_hosts_path().read_text() == f"{label} {emulator.host_public_key()}\n"
    assert stat.S_IMODE(known_hosts_path().stat().st_mode) == 0o600

    assert second.returncode == 0, second.stderr
    assert stderr_lines(second) == []


def test_changed_host_key_is_refused(tmp_path: Path, user_key: Path) -> None:
    """A workspace answering with a new host key is refused with 255."""
    before = start_emulator(tmp_path / "before" / "state")
    try:
        before.authorize(Path(f"{user_key}.pub"))
        recorded = run_exec(before, "true", options=["-i", user_key])
    finally:
        before.stop()
    assert recorded.returncode == 0, recorded.stderr

    # Same address, fresh state directory: a new host key behind the same label.
    port = int(before.url.rsplit(":", 1)[1])
    after = start_emulator(tmp_path / "after" / "state", port=port)
    try:
        after.authorize(Path(f"{user_key}.pub"))
        refused = run_exec(after, "echo ran", options=["-i", user_key])
    finally:
        after.stop()

    assert refused.returncode == 255
    assert refused.stdout == b""
    (error,) = stderr_lines(refused)
    assert error.startswith("wsbridge: the host key of workspace demo has changed")
    assert str(known_hosts_path()) in error
    assert before.host_public_key() in known_hosts_path().read_text()


def test_strict_refuses_an_unknown_host_key(emulator: Emulator, user_key: Path) -> None:
    """--strict with nothing pinned exits 255, runs nothing and records nothing."""
    result = run_exec(emulator, "echo ran", options=["--strict", "-i", user_key])
    assert result.returncode == 255
    assert result.stdout == b""
    (error,) = stderr_lines(result)
    assert error.startswith("wsbridge: the host key of workspace demo is not known")
    assert "--strict" in error
    assert not known_hosts_path().exists()


def test_strict_accepts_a_recorded_host_key(emulator: Emulator, user_key: Path) -> None:
    """--strict connects once the key has been pinned by an earlier login."""
    run_exec(emulator, "true", options=["-i", user_key])
    result = run_exec(emulator, "echo ran", options=["--strict", "-i", user_key])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ran\n"

"""OpenSSH through ``wsbridge proxy`` to the emulator, and to faulty peers.

Each behaviour that involves a workspace runs against both SSH back ends of
the emulator: its embedded server, and a splice to a real OpenSSH sshd.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .emulator import (
    DEFAULT_WORKSPACE,
    Emulator,
    EmulatorFactory,
    write_access_key,
)
from .faulty_peer import (
    FaultyPeer,
    close_without_exit_code,
    exit_after_output,
    splice_then_abort,
)
from .openssh import OpenSSH, proxy_argv, write_known_hosts
from .procs import run_command, scaled
from .proxy_process import (
    PROXY_TIMEOUT,
    SSH_BANNER_PREFIX,
    HeldStdin,
    error_line,
    open_stdin,
    read_at_least,
    run_proxy,
)
from .sshd import Sshd, public_key_line

# A command over loopback: Python start-up for the proxy dominates.
SSH_TIMEOUT = 60.0

# 32 MiB through Python at both ends; generous for a loaded two-core machine.
TRANSFER_TIMEOUT = 100.0

# How fast a dropped connection must turn into an exit: the brief says ~10 s.
DROP_TIMEOUT = 15.0

BLOB_SIZE = 32 * 1024 * 1024
SCP_FILE_SIZE = 4 * 1024 * 1024

# The workspace path the platform serves, from PROTOCOL.md.
SSH_PATH = (
    "/kubernetes/management/apis/management.loft.sh/v1/namespaces/loft-p-{project}"
    "/devpodworkspaceinstances/{workspace}/ssh"
)


@dataclass(frozen=True)
class Bridge:
    """An emulator in front of an SSH server, reached with OpenSSH."""

    emulator: Emulator
    openssh: OpenSSH

    def proxy(
        self, workspace: str = DEFAULT_WORKSPACE, options: Sequence[str] = ()
    ) -> list[str]:
        """Return the proxy argv for ``workspace`` with the emulator's key."""
        return proxy_argv(
            self.emulator.url,
            workspace,
            access_key_file=self.emulator.access_key_file,
            options=options,
        )

    def ssh(self, command: str, proxy: Sequence[str] | None = None) -> list[str]:
        """Return an ssh argv that runs ``command`` in the demo workspace."""
        return self.openssh.ssh(
            DEFAULT_WORKSPACE, command, proxy=proxy if proxy else self.proxy()
        )


@pytest.fixture(params=["embedded", "sshd"])
def bridge(
    request: pytest.FixtureRequest,
    emulator_factory: EmulatorFactory,
    sshd: Sshd,
    openssh: OpenSSH,
) -> Bridge:
    """Return an emulator whose SSH back end is the parameter, host key pinned."""
    if request.param == "embedded":
        emulator = emulator_factory()
        host_key = emulator.host_public_key()
    else:
        emulator = emulator_factory(ssh_upstream=sshd.address)
        host_key = public_key_line(sshd.host_key)
    write_known_hosts(openssh.known_hosts, host_key)
    return Bridge(emulator, openssh)


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a file of 32 MiB of random bytes."""
    path = tmp_path_factory.mktemp("blob") / "random.bin"
    path.write_bytes(os.urandom(BLOB_SIZE))
    return path


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file's contents."""
    with path.open("rb") as contents:
        return hashlib.file_digest(contents, "sha256").hexdigest()


@contextlib.contextmanager
def running_proxy(
    argv: Sequence[str],
) -> Iterator[tuple[subprocess.Popen[bytes], HeldStdin]]:
    """Start the proxy as ssh would; yield it and its held-open stdin."""
    with open_stdin() as stdin:
        proxy = subprocess.Popen(argv, stdin=stdin.read_end, stdout=subprocess.PIPE)
        try:
            yield proxy, stdin
        finally:
            proxy.kill()
            proxy.wait()
            if proxy.stdout is not None:
                proxy.stdout.close()


# --- commands and data through the emulator --------------------------------


def test_remote_output_and_exit_code_reach_ssh(bridge: Bridge) -> None:
    """A remote command's stdout and exit code come back through ssh."""
    result = run_command(bridge.ssh("echo hello; exit 7"), SSH_TIMEOUT)

    assert result.stdout == b"hello\n", result.stderr
    assert result.returncode == 7, result.stderr


def test_upload_of_32_mib_arrives_intact(
    bridge: Bridge, blob: Path, tmp_path: Path
) -> None:
    """32 MiB fed to ``ssh host 'cat > file'`` land byte for byte."""
    remote = tmp_path / "uploaded.bin"

    with blob.open("rb") as source:
        result = run_command(
            bridge.ssh(f"cat > {shlex.quote(str(remote))}"),
            TRANSFER_TIMEOUT,
            stdin=source,
        )

    assert result.returncode == 0, result.stderr
    assert sha256_of(remote) == sha256_of(blob)


def test_download_of_32_mib_arrives_intact(
    bridge: Bridge, blob: Path, tmp_path: Path
) -> None:
    """32 MiB read with ``ssh host 'cat file'`` arrive byte for byte."""
    downloaded = tmp_path / "downloaded.bin"

    with downloaded.open("wb") as sink:
        result = run_command(
            bridge.ssh(f"cat {shlex.quote(str(blob))}"), TRANSFER_TIMEOUT, stdout=sink
        )

    assert result.returncode == 0, result.stderr
    assert sha256_of(downloaded) == sha256_of(blob)


def test_scp_copies_a_file_both_ways_unchanged(bridge: Bridge, tmp_path: Path) -> None:
    """scp through the proxy copies a file there and back byte for byte."""
    original = tmp_path / "original.bin"
    original.write_bytes(os.urandom(SCP_FILE_SIZE))
    remote = tmp_path / "remote copy.bin"
    returned = tmp_path / "returned.bin"
    proxy = bridge.proxy()

    upload = run_command(
        bridge.openssh.scp(str(original), f"demo:{remote}", proxy=proxy),
        TRANSFER_TIMEOUT,
    )
    assert upload.returncode == 0, upload.stderr
    download = run_command(
        bridge.openssh.scp(f"demo:{remote}", str(returned), proxy=proxy),
        TRANSFER_TIMEOUT,
    )
    assert download.returncode == 0, download.stderr

    assert remote.read_bytes() == original.read_bytes()
    assert returned.read_bytes() == original.read_bytes()


def test_proxy_stdout_starts_with_the_ssh_banner(bridge: Bridge) -> None:
    """Nothing precedes the SSH server's banner on the proxy's stdout."""
    with running_proxy(bridge.proxy()) as (proxy, _):
        assert proxy.stdout is not None
        first_bytes = read_at_least(proxy.stdout, len(SSH_BANNER_PREFIX), PROXY_TIMEOUT)

    assert first_bytes == SSH_BANNER_PREFIX


def test_proxy_exits_when_its_stdin_closes(bridge: Bridge) -> None:
    """When ssh closes the pipe, the proxy ends instead of lingering."""
    with running_proxy(bridge.proxy()) as (proxy, stdin):
        assert proxy.stdout is not None
        read_at_least(proxy.stdout, len(SSH_BANNER_PREFIX), PROXY_TIMEOUT)

        stdin.close_writer()

        proxy.wait(scaled(PROXY_TIMEOUT))


# --- authentication --------------------------------------------------------


def test_cookie_authentication_is_accepted(bridge: Bridge) -> None:
    """``--auth cookie`` logs in as well as the default header does."""
    proxy = bridge.proxy(options=["--auth", "cookie"])

    result = run_command(bridge.ssh("echo cookie-ok", proxy=proxy), SSH_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"cookie-ok\n"


def test_server_and_access_key_can_come_from_the_environment(
    bridge: Bridge,
) -> None:
    """WSBRIDGE_SERVER and WSBRIDGE_ACCESS_KEY stand in for the options."""
    env = {
        **os.environ,
        "WSBRIDGE_SERVER": bridge.emulator.url,
        "WSBRIDGE_ACCESS_KEY": bridge.emulator.access_key,
    }
    proxy = proxy_argv(None, DEFAULT_WORKSPACE)

    result = run_command(bridge.ssh("echo env-ok", proxy=proxy), SSH_TIMEOUT, env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"env-ok\n"


@pytest.mark.parametrize("auth", ["header", "cookie"])
def test_wrong_access_key_is_refused_without_echoing_it(
    emulator_factory: EmulatorFactory, tmp_path: Path, auth: str
) -> None:
    """A refused key gives exit 255, one line naming the cause, no key text."""
    emulator = emulator_factory()
    wrong_key = "wrong-" + emulator.access_key[::-1]
    key_file = write_access_key(tmp_path / "wrong-key", wrong_key)

    result = run_proxy(
        proxy_argv(
            emulator.url,
            DEFAULT_WORKSPACE,
            access_key_file=key_file,
            options=["--auth", auth],
        )
    )

    assert result.returncode == 255
    assert re.search(r"401|403|access key", error_line(result.stderr), re.I)
    for output in (result.stdout, result.stderr):
        assert wrong_key.encode() not in output
        assert emulator.access_key.encode() not in output


def test_wrong_access_key_fails_ssh_with_the_proxy_message(
    bridge: Bridge, tmp_path: Path
) -> None:
    """Under ssh, a refused key ends ssh with 255 and the proxy's message."""
    key_file = write_access_key(tmp_path / "wrong-key", "not-the-key")
    proxy = proxy_argv(bridge.emulator.url, DEFAULT_WORKSPACE, access_key_file=key_file)

    result = run_command(bridge.ssh("echo unreachable", proxy=proxy), SSH_TIMEOUT)

    assert result.returncode == 255
    assert b"wsbridge: " in result.stderr
    assert b"Traceback" not in result.stderr
    assert b"not-the-key" not in result.stderr


def test_unknown_workspace_is_reported_as_not_found(
    emulator_factory: EmulatorFactory,
) -> None:
    """A workspace the server does not know gives exit 255 and "not found"."""
    emulator = emulator_factory()

    result = run_proxy(
        proxy_argv(
            emulator.url, "no-such-workspace", access_key_file=emulator.access_key_file
        )
    )

    assert result.returncode == 255
    assert "not found" in error_line(result.stderr).lower()


@pytest.mark.parametrize("auth", ["header", "cookie"])
def test_handshake_carries_the_key_only_where_the_auth_mode_says(
    tmp_path: Path, auth: str
) -> None:
    """The ssh URL follows PROTOCOL.md; the key goes in one header, never the URL."""
    key = "key-" + os.urandom(12).hex()
    key_file = write_access_key(tmp_path / "key", key)

    with FaultyPeer(exit_after_output(b"", 0)) as peer:
        result = run_proxy(
            proxy_argv(
                peer.url,
                "ws1",
                access_key_file=key_file,
                options=["--project", "p1", "--auth", auth],
            )
        )

    assert result.returncode == 0, result.stderr
    [handshake] = peer.handshakes
    assert handshake.path.split("?")[0] == SSH_PATH.format(
        project="p1", workspace="ws1"
    )
    assert key not in handshake.path
    authorization = handshake.headers.get_all("Authorization")
    cookies = "; ".join(handshake.headers.get_all("Cookie"))
    if auth == "header":
        assert authorization == [f"Bearer {key}"]
        assert key not in cookies
    else:
        assert authorization == []
        assert f"loft_access_key={key}" in cookies


# --- a server that misbehaves ---------------------------------------------


def test_exit_code_after_output_ends_the_proxy_with_all_output(
    tmp_path: Path,
) -> None:
    """An exit code right after a burst of output: all bytes out, that code."""
    payload = os.urandom(4 * 1024 * 1024)
    key_file = write_access_key(tmp_path / "key")

    with FaultyPeer(exit_after_output(payload, 3)) as peer:
        result = run_proxy(proxy_argv(peer.url, "demo", access_key_file=key_file))

    assert result.returncode == 3, result.stderr
    assert result.stdout == payload
    assert peer.outcome.client_close_code == 1000


def test_normal_close_without_exit_code_is_an_error(tmp_path: Path) -> None:
    """A close frame with no exit code before it ends the proxy with 255."""
    key_file = write_access_key(tmp_path / "key")

    with FaultyPeer(close_without_exit_code(b"partial output")) as peer:
        result = run_proxy(proxy_argv(peer.url, "demo", access_key_file=key_file))

    assert result.returncode == 255
    assert result.stdout == b"partial output"
    assert re.search(r"\blost\b|closed", error_line(result.stderr), re.I)


def test_dropped_connection_ends_the_proxy_with_a_message(
    sshd: Sshd, tmp_path: Path
) -> None:
    """A TCP reset with no close frame ends the proxy at once with 255."""
    key_file = write_access_key(tmp_path / "key")

    # The banner alone crosses the threshold, so the drop follows it.
    with FaultyPeer(splice_then_abort(sshd.port, abort_after=1)) as peer:
        started = time.monotonic()
        result = run_proxy(
            proxy_argv(peer.url, "demo", access_key_file=key_file),
            timeout=DROP_TIMEOUT,
        )
        elapsed = time.monotonic() - started

    assert peer.outcome.events == ["aborted"]
    assert result.returncode == 255
    assert result.stdout.startswith(SSH_BANNER_PREFIX)
    assert re.search(r"\blost\b|closed|reset", error_line(result.stderr), re.I)
    assert elapsed < scaled(DROP_TIMEOUT)


def test_connection_dropped_mid_download_fails_ssh_promptly(
    sshd: Sshd, openssh: OpenSSH, tmp_path: Path
) -> None:
    """A drop in the middle of a download ends ssh with an error, not a hang."""
    write_known_hosts(openssh.known_hosts, public_key_line(sshd.host_key))
    key_file = write_access_key(tmp_path / "key")
    download_size = 64 * 1024 * 1024

    with FaultyPeer(splice_then_abort(sshd.port, abort_after=1024 * 1024)) as peer:
        proxy = proxy_argv(peer.url, "demo", access_key_file=key_file)
        result = run_command(
            openssh.ssh("demo", f"head -c {download_size} /dev/zero", proxy=proxy),
            DROP_TIMEOUT,
        )

    assert peer.outcome.events == ["aborted"]
    assert result.returncode != 0
    assert len(result.stdout) < download_size
    assert b"wsbridge: " in result.stderr
    assert b"Traceback" not in result.stderr

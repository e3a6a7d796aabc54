"""``wsbridge config-ssh`` as a user runs it, then OpenSSH as tools run it.

OpenSSH finds ``~`` in the passwd entry, not in $HOME, so a bare ``ssh
demo.devpod`` here would read the real user's config. Each test therefore
writes its own config file and hands it to OpenSSH with ``-F``, and that is
the only option given to ssh, scp and rsync: everything else they need
(proxy, user, key, known hosts) must come from the block.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from wsbridge.sshconfig import BEGIN_MARKER, END_MARKER

from . import ssh_samples
from .emulator import Emulator, start_emulator, write_access_key
from .procs import LineCollector, run_command, scaled

# Python start-up plus, at most, one request over loopback.
CLI_TIMEOUT = 30.0

# ssh starts the proxy (Python start-up) and logs in over loopback.
SSH_TIMEOUT = 60.0

# The VS Code way: how long to wait for the remote script's ready line.
READY_TIMEOUT = 30.0

# Socket operations on loopback through the SOCKS forward.
SOCKET_TIMEOUT = 15.0

# A server address for tests that never reach a server: nothing listens on
# the discard port of loopback in the test environment, and nothing tries.
OFFLINE_SERVER = "ws://127.0.0.1:9"



def run_wsbridge(
    *args: str | Path, executable: Sequence[str | Path] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the wsbridge CLI; fail on a traceback in its output."""
    argv = [*(executable or (sys.executable, "-m", "wsbridge")), *args]
    result = subprocess.run(
        [str(arg) for arg in argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=scaled(CLI_TIMEOUT),
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def ssh_options(emulator: Emulator, user_key: Path) -> list[str]:
    """Return the config-ssh flags for ``emulator``, logging in with ``user_key``."""
    return [
        "--server",
        emulator.url,
        "--access-key-file",
        str(emulator.access_key_file),
        "--ssh-option",
        f"IdentityFile={user_key}",
        # Offer only the test's key, never the real user's ~/.ssh/id_*.
        "--ssh-option",
        "IdentitiesOnly=yes",
    ]


def managed_block(config: Path) -> str:
    """Return the text of the block in ``config``, markers included."""
    text = config.read_text()
    start = text.index(BEGIN_MARKER)
    return text[start : text.index(END_MARKER, start) + len(END_MARKER)]


def known_hosts() -> Path:
    """Return the known_hosts file the block names (XDG_STATE_HOME is ours)."""
    return Path(os.environ["XDG_STATE_HOME"]) / "wsbridge" / "ssh_known_hosts"


def assert_ssh_echo_ok(config: Path, host: str = "demo.devpod") -> None:
    """Run ``ssh -F config HOST 'echo ok'`` and expect just ``ok``."""
    result = run_command(["ssh", "-F", config, host, "echo ok"], SSH_TIMEOUT)

    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"ok\n", result.stderr.decode()


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def emulator(
    tmp_path_factory: pytest.TempPathFactory, user_key: Path
) -> Iterator[Emulator]:
    """Run one emulator for the module, serving demo and other to ``user_key``.

    No test here changes a workspace, so they share it and start faster.
    """
    state_dir = tmp_path_factory.mktemp("emulator") / "state"
    started = start_emulator(state_dir, workspaces=("demo", "other"))
    started.authorize(Path(f"{user_key}.pub"))
    yield started
    started.stop()
    # Shown under "Captured stdout teardown" when a test failed.
    print(started.process.output())


@pytest.fixture
def configured(emulator: Emulator, user_key: Path, tmp_path: Path) -> Path:
    """Run config-ssh against the emulator; return the config file it wrote."""
    config = tmp_path / "ssh" / "config"
    result = run_wsbridge(
        "config-ssh", "--ssh-config", config, *ssh_options(emulator, user_key)
    )
    assert result.returncode == 0, result.stderr
    return config


@pytest.fixture
def offline_flags(tmp_path: Path) -> list[str]:
    """Return connection flags for config-ssh runs that never contact a server."""
    key_file = write_access_key(tmp_path / "offline-key")
    return ["--server", OFFLINE_SERVER, "--access-key-file", str(key_file)]


@pytest.fixture
def user_config(tmp_path: Path) -> Path:
    """Return a user's ssh config (see ssh_samples), mode 0644."""
    included = tmp_path / "included.conf"
    included.write_text("Host included\n    Port 2200\n")
    config = tmp_path / "ssh" / "config"
    config.parent.mkdir()
    config.write_text(ssh_samples.user_config(str(included)))
    config.chmod(0o644)
    return config


# --- OpenSSH, scp, rsync and VS Code through the written block ---------------


def test_ssh_with_only_the_config_reaches_the_workspace(
    configured: Path, emulator: Emulator
) -> None:
    """After config-ssh, ``ssh -F cfg demo.devpod 'echo ok'`` prints ok."""
    assert_ssh_echo_ok(configured)

    # accept-new recorded the workspace's real host key in the block's file.
    pinned = known_hosts().read_text()
    assert f"demo.devpod {emulator.host_public_key()}" in pinned


def test_ssh_works_after_login_without_server_flags(
    emulator: Emulator, user_key: Path, tmp_path: Path
) -> None:
    """After ``wsbridge login`` the block names the profile, not server or key."""
    login = run_wsbridge(
        "login",
        "--server",
        emulator.url,
        "--access-key-file",
        emulator.access_key_file,
    )
    assert login.returncode == 0, login.stderr
    config = tmp_path / "ssh" / "config"

    result = run_wsbridge(
        "config-ssh",
        "--ssh-config",
        config,
        "--ssh-option",
        f"IdentityFile={user_key}",
        "--ssh-option",
        "IdentitiesOnly=yes",
    )

    assert result.returncode == 0, result.stderr
    proxy = next(
        line for line in managed_block(config).splitlines() if "ProxyCommand" in line
    )
    assert "--profile default" in proxy
    assert emulator.url not in proxy
    assert str(emulator.access_key_file) not in proxy
    assert emulator.access_key not in config.read_text()
    assert_ssh_echo_ok(config)


def test_vscode_remote_ssh_invocation_runs_its_script_and_forwards(
    configured: Path,
) -> None:
    """VS Code's ``ssh -T -D PORT -o ConnectTimeout=15 HOST bash`` works fully.

    The script on stdin runs, and the dynamic forward VS Code tunnels its
    server connection through reaches a loopback port on the workspace side.
    """
    socks_port = free_port()
    argv = ["ssh", "-F", str(configured), "-T", "-D", str(socks_port)]
    argv += ["-o", "ConnectTimeout=15", "demo.devpod", "bash"]
    target = socket.create_server(("127.0.0.1", 0))
    target.settimeout(scaled(SOCKET_TIMEOUT))
    ssh = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert ssh.stdin is not None and ssh.stdout is not None and ssh.stderr is not None
    stdout = LineCollector(ssh.stdout, "ssh stdout")
    stderr = LineCollector(ssh.stderr, "ssh stderr")
    try:
        ssh.stdin.write(b'echo "script ran: $((6 * 7))"\n')
        ssh.stdin.flush()
        stdout.wait_for(re.compile(r"^script ran: 42$"), READY_TIMEOUT)

        with socks_connect(socks_port, target.getsockname()[1]) as tunnel:
            accepted, _ = target.accept()
            with accepted:
                accepted.sendall(b"through the forward\n")
                assert recv_exactly(tunnel, 20) == b"through the forward\n"

        ssh.stdin.write(b"exit 0\n")
        ssh.stdin.close()
        assert ssh.wait(scaled(SSH_TIMEOUT)) == 0, stderr.tail()
    finally:
        target.close()
        if ssh.poll() is None:
            ssh.kill()
            ssh.wait()


def socks_connect(socks_port: int, target_port: int) -> socket.socket:
    """Open a SOCKS5 CONNECT to 127.0.0.1:``target_port`` through ``socks_port``."""
    tunnel = socket.create_connection(
        ("127.0.0.1", socks_port), timeout=scaled(SOCKET_TIMEOUT)
    )
    try:
        tunnel.sendall(b"\x05\x01\x00")
        assert recv_exactly(tunnel, 2) == b"\x05\x00"
        request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
        tunnel.sendall(request + target_port.to_bytes(2, "big"))
        reply = recv_exactly(tunnel, 10)
        assert reply[:2] == b"\x05\x00", f"SOCKS CONNECT refused: {reply!r}"
    except BaseException:
        tunnel.close()
        raise
    return tunnel


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes from ``sock`` (its timeout applies)."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


@pytest.mark.parametrize("tool", ["scp", "rsync"])
def test_file_copies_there_and_back_unchanged(
    configured: Path, tmp_path: Path, tool: str
) -> None:
    """scp and ``rsync -e 'ssh -F cfg'`` to and from demo.devpod keep every byte."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    copy = (
        ["scp", "-F", str(configured)]
        if tool == "scp"
        else ["rsync", "-e", f"ssh -F {configured}"]
    )
    original = tmp_path / "original.bin"
    original.write_bytes(os.urandom(256 * 1024))
    remote = tmp_path / f"remote-{tool}.bin"
    returned = tmp_path / "returned.bin"

    upload = run_command([*copy, original, f"demo.devpod:{remote}"], SSH_TIMEOUT)
    assert upload.returncode == 0, upload.stderr.decode()
    download = run_command([*copy, f"demo.devpod:{remote}", returned], SSH_TIMEOUT)
    assert download.returncode == 0, download.stderr.decode()

    assert remote.read_bytes() == original.read_bytes()
    assert returned.read_bytes() == original.read_bytes()


def test_executable_under_a_path_with_a_space_works(
    emulator: Emulator, user_key: Path, tmp_path: Path
) -> None:
    """A wsbridge installed under ``dir with space`` writes a working block."""
    installed = Path(sysconfig.get_path("scripts")) / "wsbridge"
    assert installed.is_file(), "the wsbridge console script is not installed"
    copy = tmp_path / "dir with space" / "wsbridge"
    copy.parent.mkdir()
    shutil.copy2(installed, copy)
    config = tmp_path / "ssh" / "config"

    result = run_wsbridge(
        "config-ssh",
        "--ssh-config",
        config,
        *ssh_options(emulator, user_key),
        executable=[copy],
    )

    assert result.returncode == 0, result.stderr
    assert f"    ProxyCommand '{copy}' proxy " in managed_block(config)
    assert_ssh_echo_ok(config)


def test_no_wildcard_writes_one_entry_per_listed_workspace(
    emulator: Emulator, user_key: Path, tmp_path: Path
) -> None:
    """--no-wildcard names each workspace the server lists; each one works."""
    config = tmp_path / "ssh" / "config"

    result = run_wsbridge(
        "config-ssh",
        "--ssh-config",
        config,
        "--no-wildcard",
        *ssh_options(emulator, user_key),
    )

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout, result.stdout
    hosts = re.findall(r"^Host (.*)$", managed_block(config), re.MULTILINE)
    assert hosts == ["demo.devpod", "other.devpod"]
    assert_ssh_echo_ok(config, "other.devpod")


def test_no_wildcard_with_a_wrong_key_fails_without_writing(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A refused workspace list exits 255 and leaves no config file behind."""
    wrong = write_access_key(tmp_path / "wrong-key")
    config = tmp_path / "ssh" / "config"

    result = run_wsbridge(
        "config-ssh",
        "--ssh-config",
        config,
        "--no-wildcard",
        "--server",
        emulator.url,
        "--access-key-file",
        wrong,
    )

    assert result.returncode == 255
    assert "rejected the access key" in result.stderr
    assert not config.exists()


# --- what config-ssh does to the file ------------------------------------------


def test_block_is_appended_and_the_rest_kept_byte_for_byte(
    user_config: Path, offline_flags: list[str]
) -> None:
    """The user's lines stay exactly as they were, before the new block."""
    original = user_config.read_bytes()

    result = run_wsbridge("config-ssh", "--ssh-config", user_config, *offline_flags)

    assert result.returncode == 0, result.stderr
    written = user_config.read_bytes()
    assert written.startswith(original + b"\n" + BEGIN_MARKER.encode() + b"\n")
    assert written.endswith(END_MARKER.encode() + b"\n")
    assert stat.S_IMODE(user_config.stat().st_mode) == 0o644
    backup = user_config.with_name("config.wsbridge.bak")
    assert backup.read_bytes() == original
    assert f"previous version kept in {backup}" in result.stdout


def test_second_run_changes_nothing(
    user_config: Path, offline_flags: list[str]
) -> None:
    """Running again leaves bytes and mtime alone and says it is up to date."""
    first = run_wsbridge("config-ssh", "--ssh-config", user_config, *offline_flags)
    assert first.returncode == 0, first.stderr
    os.utime(user_config, ns=(1_000_000_000, 1_000_000_000))
    written = user_config.read_bytes()
    backup = user_config.with_name("config.wsbridge.bak").read_bytes()

    second = run_wsbridge("config-ssh", "--ssh-config", user_config, *offline_flags)

    assert second.returncode == 0, second.stderr
    assert f"{user_config} is up to date" in second.stdout
    assert user_config.read_bytes() == written
    assert user_config.stat().st_mtime_ns == 1_000_000_000
    assert user_config.with_name("config.wsbridge.bak").read_bytes() == backup


def test_changed_settings_replace_the_block_where_it_stands(
    user_config: Path, offline_flags: list[str]
) -> None:
    """A block the user moved is refreshed in place; both sides stay as is."""
    first = run_wsbridge("config-ssh", "--ssh-config", user_config, *offline_flags)
    assert first.returncode == 0, first.stderr
    block = managed_block(user_config) + "\n"
    head = "# moved to the top on purpose\r\n"
    tail = user_config.read_text().replace(block, "")
    user_config.write_text(head + block + tail)

    result = run_wsbridge(
        "config-ssh",
        "--ssh-config",
        user_config,
        *offline_flags,
        "--ssh-option",
        "Compression=yes",
    )

    assert result.returncode == 0, result.stderr
    new_block = managed_block(user_config) + "\n"
    assert "    Compression yes\n" in new_block
    assert user_config.read_bytes() == (head + new_block + tail).encode()


def test_new_config_file_is_created_private(
    tmp_path: Path, offline_flags: list[str]
) -> None:
    """A config that did not exist is created 0600, without a backup."""
    config = tmp_path / "new" / "config"

    result = run_wsbridge("config-ssh", "--ssh-config", config, *offline_flags)

    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert not config.with_name("config.wsbridge.bak").exists()


def test_dry_run_prints_the_diff_and_writes_nothing(
    user_config: Path, offline_flags: list[str]
) -> None:
    """--dry-run shows the added lines as a diff; the file is untouched."""
    original = user_config.read_bytes()
    mtime = user_config.stat().st_mtime_ns

    result = run_wsbridge(
        "config-ssh", "--ssh-config", user_config, "--dry-run", *offline_flags
    )

    assert result.returncode == 0, result.stderr
    assert f"--- {user_config}\n" in result.stdout
    assert f"+{BEGIN_MARKER}\n" in result.stdout
    assert "+Host *.devpod\n" in result.stdout
    assert user_config.read_bytes() == original
    assert user_config.stat().st_mtime_ns == mtime
    assert sorted(path.name for path in user_config.parent.iterdir()) == ["config"]


def test_remove_gives_back_the_original_bytes(
    user_config: Path, offline_flags: list[str]
) -> None:
    """--remove after config-ssh restores the file exactly, mode included."""
    original = user_config.read_bytes()
    added = run_wsbridge("config-ssh", "--ssh-config", user_config, *offline_flags)
    assert added.returncode == 0, added.stderr

    removed = run_wsbridge("config-ssh", "--ssh-config", user_config, "--remove")

    assert removed.returncode == 0, removed.stderr
    assert f"removed the wsbridge block from {user_config}" in removed.stdout
    assert user_config.read_bytes() == original
    assert stat.S_IMODE(user_config.stat().st_mode) == 0o644
    again = run_wsbridge("config-ssh", "--ssh-config", user_config, "--remove")
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stdout


@pytest.mark.parametrize("mode", [[], ["--remove"]], ids=["write", "remove"])
def test_damaged_markers_give_one_line_and_exit_2(
    user_config: Path, offline_flags: list[str], mode: list[str]
) -> None:
    """A begin marker without its end line is refused; nothing is written."""
    user_config.write_text(f"Host a\n{BEGIN_MARKER}\nHost *.devpod\n")
    original = user_config.read_bytes()

    result = run_wsbridge(
        "config-ssh", "--ssh-config", user_config, *offline_flags, *mode
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("wsbridge: ") and "damaged" in result.stderr
    assert user_config.read_bytes() == original
    assert sorted(path.name for path in user_config.parent.iterdir()) == ["config"]


@pytest.mark.parametrize(
    "bad", [["--ssh-option", "Bogus=1"], ["--user", "a b"]], ids=["option", "user"]
)
@pytest.mark.parametrize("mode", [[], ["--dry-run"]], ids=["write", "dry-run"])
def test_block_that_ssh_rejects_is_never_written(
    user_config: Path, offline_flags: list[str], bad: list[str], mode: list[str]
) -> None:
    """An option or user OpenSSH cannot parse fails before the file changes."""
    original = user_config.read_bytes()

    result = run_wsbridge(
        "config-ssh", "--ssh-config", user_config, *offline_flags, *bad, *mode
    )

    assert result.returncode == 2
    assert result.stderr.startswith("wsbridge: ssh rejects the block")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert user_config.read_bytes() == original
    assert sorted(path.name for path in user_config.parent.iterdir()) == ["config"]


def test_earlier_host_star_proxycommand_is_reported_as_shadowing(
    user_config: Path, offline_flags: list[str]
) -> None:
    """A user ``Host *`` with its own ProxyCommand before the block is named."""
    user_config.write_text("Host *\n    ProxyCommand nc %h %p\n")

    result = run_wsbridge("config-ssh", "--ssh-config", user_config, *offline_flags)

    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stdout and "shadowed" in result.stdout
    assert "nc %h %p" in result.stdout
    assert "now goes through wsbridge" not in result.stdout


def test_unshadowed_block_is_confirmed(
    user_config: Path, offline_flags: list[str]
) -> None:
    """Without an earlier ProxyCommand, config-ssh confirms the block applies."""
    result = run_wsbridge("config-ssh", "--ssh-config", user_config, *offline_flags)

    assert result.returncode == 0, result.stderr
    assert "ssh workspace.devpod now goes through wsbridge" in result.stdout
    assert "warning" not in result.stdout

"""Run a real OpenSSH sshd on a loopback port, with key-only authentication.

Used by the test suite (as a workspace's SSH server behind the emulator, and
behind fault-injecting peers) and by ``scripts/bench.py`` (as the baseline
that wsbridge is compared with).
"""

from __future__ import annotations

import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import START_TIMEOUT, ProcessFailed, ServerProcess, scaled

SSHD = Path("/usr/sbin/sshd")
LOOPBACK = "127.0.0.1"

# sshd refuses to start without its privilege separation directory, which a
# fresh container does not have.
PRIVSEP_DIR = Path("/run/sshd")

# A free port found by binding to port 0 can be taken by someone else before
# sshd binds it; starting again on a new port settles that rare race.
START_ATTEMPTS = 3

KEYGEN_TIMEOUT = 30.0

_LISTENING = re.compile(r"Server listening on 127\.0\.0\.1 port (\d+)")
_ADDRESS_IN_USE = "Address already in use"


def generate_key(path: Path, comment: str = "wsbridge-tests") -> Path:
    """Create an unencrypted ed25519 key pair at ``path`` and ``path``.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=scaled(KEYGEN_TIMEOUT),
    )
    return path


def public_key_line(private_key: Path) -> str:
    """Return the ``type base64`` part of the public key beside ``private_key``."""
    key_type, key_data = Path(f"{private_key}.pub").read_text().split()[:2]
    return f"{key_type} {key_data}"


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@dataclass
class Sshd:
    """A running sshd that accepts the keys in its ``authorized_keys``."""

    process: ServerProcess
    port: int
    host_key: Path
    authorized_keys: Path

    @property
    def address(self) -> str:
        """Return ``HOST:PORT``, as ``wsbridge emulator --ssh-upstream`` takes."""
        return f"{LOOPBACK}:{self.port}"

    def authorize(self, public_key: Path) -> None:
        """Let the owner of ``public_key`` (a .pub file) log in."""
        with self.authorized_keys.open("a") as keys:
            keys.write(public_key.read_text())

    def stop(self) -> None:
        """Stop sshd; established sessions end with it."""
        self.process.stop()


def _write_config(directory: Path, port: int, host_key: Path) -> Path:
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress {LOOPBACK}\n"
        f"Port {port}\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PidFile none\n"
        # OpenSSH 9's scp speaks SFTP, so the server must offer it.
        "Subsystem sftp internal-sftp\n"
        "LogLevel INFO\n"
    )
    return config


def start_sshd(directory: Path) -> Sshd:
    """Start sshd in the foreground, configured and keyed inside ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_key = generate_key(directory / "ssh_host_ed25519_key", "wsbridge-sshd")
    authorized_keys = directory / "authorized_keys"
    authorized_keys.touch(mode=0o600)

    failure = ""
    for _ in range(START_ATTEMPTS):
        port = free_port()
        config = _write_config(directory, port, host_key)
        process = ServerProcess(f"sshd:{port}", [SSHD, "-D", "-e", "-f", config])
        try:
            process.stderr.wait_for(_LISTENING, START_TIMEOUT)
        except ProcessFailed as exc:
            process.stop()
            failure = f"{exc}\n{process.output()}"
            if _ADDRESS_IN_USE in failure:
                continue
            break
        return Sshd(process, port, host_key, authorized_keys)
    raise ProcessFailed(f"sshd did not start: {failure}")

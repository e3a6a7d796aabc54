"""Run ``wsbridge emulator`` as a child process, as a user would."""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .procs import START_TIMEOUT, ProcessFailed, ServerProcess

# PROTOCOL.md fixes the first stdout line; the tests parse nothing else.
_LISTENING = re.compile(r"wsbridge emulator listening on (wss?://127\.0\.0\.1:\d+)")

DEFAULT_WORKSPACE = "demo"


@dataclass(frozen=True)
class TLSFiles:
    """A server certificate chain and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass
class Emulator:
    """A running emulator and the files a client needs to reach it."""

    process: ServerProcess
    url: str
    state_dir: Path
    access_key_file: Path

    @property
    def access_key(self) -> str:
        """Return the access key the emulator accepts."""
        return self.access_key_file.read_text().strip()

    @property
    def host_key(self) -> Path:
        """Return the private host key of the embedded SSH server."""
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        """Return the file the embedded SSH server reads client keys from."""
        return self.state_dir / "authorized_keys"

    def host_public_key(self) -> str:
        """Return the embedded SSH server's public host key as ``type base64``."""
        key = asyncssh.read_private_key(self.host_key)
        key_type, key_data = key.export_public_key("openssh").decode().split()[:2]
        return f"{key_type} {key_data}"

    def authorize(self, public_key: Path) -> None:
        """Let the owner of ``public_key`` (a .pub file) into the embedded server."""
        with self.authorized_keys.open("a") as keys:
            keys.write("\n" + public_key.read_text())

    def stop(self) -> int:
        """Stop the emulator with SIGTERM and return its exit status."""
        return self.process.stop()


# What the ``emulator_factory`` fixture yields: keyword options in, a running
# emulator out.
EmulatorFactory = Callable[..., Emulator]


def write_access_key(path: Path, key: str | None = None) -> Path:
    """Write ``key`` (a fresh random one if omitted) to ``path``, mode 0600."""
    path.touch(mode=0o600)
    path.write_text((key or secrets.token_urlsafe(24)) + "\n")
    return path


def start_emulator(
    state_dir: Path,
    *,
    access_key_file: Path | None = None,
    port: int = 0,
    workspaces: tuple[str, ...] = (),
    ssh_upstream: str | None = None,
    tls: TLSFiles | None = None,
    lifecycle_delay: float | None = None,
) -> Emulator:
    """Start ``python -m wsbridge emulator`` and wait for its listening line.

    ``port`` 0 picks a free port; a fixed one lets a restarted emulator keep
    the address clients know it by.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    if access_key_file is None:
        access_key_file = write_access_key(state_dir.parent / "access-key")

    argv: list[str | Path] = [sys.executable, "-m", "wsbridge", "emulator"]
    argv += ["--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--state-dir", state_dir, "--access-key-file", access_key_file]
    for workspace in workspaces:
        argv += ["--workspace", workspace]
    if ssh_upstream is not None:
        argv += ["--ssh-upstream", ssh_upstream]
    if tls is not None:
        argv += ["--tls-cert", tls.cert, "--tls-key", tls.key]
    if lifecycle_delay is not None:
        argv += ["--lifecycle-delay", str(lifecycle_delay)]

    process = ServerProcess("emulator", argv)
    try:
        first_line = process.stdout.wait_for_first_line(START_TIMEOUT)
        listening = _LISTENING.fullmatch(first_line)
        if listening is None:
            raise ProcessFailed(f"unexpected first stdout line {first_line!r}")
    except ProcessFailed as exc:
        process.stop()
        message = f"emulator did not start: {exc}\n{process.output()}"
        raise ProcessFailed(message) from exc
    return Emulator(process, listening.group(1), state_dir, access_key_file)

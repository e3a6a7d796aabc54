"""Run ``wsbridge proxy`` directly, the way OpenSSH runs a ProxyCommand.

OpenSSH keeps the proxy's stdin open for the whole session, so these helpers
do too: a proxy that only exits once stdin closes would hang here, as it
would under ssh.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import IO

from .procs import scaled

# Enough for Python to start, connect over loopback and fail or finish.
PROXY_TIMEOUT = 30.0

# What OpenSSH sends first and expects first (RFC 4253, section 4.2).
SSH_BANNER_PREFIX = b"SSH-2.0-"


class HeldStdin:
    """A pipe for a child's stdin whose write end stays idle until closed."""

    def __init__(self) -> None:
        self.read_end, self._write_end = os.pipe()
        self._write_open = True

    def close_writer(self) -> None:
        """Give the child end of file, as ssh does when it closes the pipe."""
        if self._write_open:
            self._write_open = False
            os.close(self._write_end)

    def close(self) -> None:
        """Close both ends."""
        self.close_writer()
        os.close(self.read_end)


@contextlib.contextmanager
def open_stdin() -> Iterator[HeldStdin]:
    """Yield a held-open stdin pipe; close it afterwards."""
    stdin = HeldStdin()
    try:
        yield stdin
    finally:
        stdin.close()


def run_proxy(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = PROXY_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """Run the proxy to completion with stdin held open; collect its output."""
    with open_stdin() as stdin:
        return subprocess.run(
            argv,
            stdin=stdin.read_end,
            capture_output=True,
            env=env,
            timeout=scaled(timeout),
        )


def read_at_least(stream: IO[bytes], count: int, timeout: float) -> bytes:
    """Read from ``stream`` until ``count`` bytes arrive, EOF, or the deadline."""
    deadline = time.monotonic() + scaled(timeout)
    received = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while len(received) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(stream.fileno(), count - len(received))
            if not chunk:
                break
            received += chunk
    return received


def error_line(stderr: bytes) -> str:
    """Return the proxy's only stderr line, checking it is a clean message."""
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{text}"
    assert lines[0].startswith("wsbridge: "), text
    return lines[0]

"""Start helper processes and wait for the line that says they are ready.

Servers under test announce readiness by printing a line (sshd's "Server
listening", the emulator's URL), so nothing here sleeps to synchronise: a
thread per pipe collects lines and callers wait, with a deadline, for the one
they need. Pipes keep draining afterwards so a chatty server never blocks on a
full pipe.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

# Slow or loaded machines can stretch every deadline at once, as websockets'
# own suite does, without editing the tests.
TIMEOUT_FACTOR = float(os.environ.get("WSBRIDGE_TESTS_TIMEOUT_FACTOR", "1"))

# Starting Python with asyncssh and cryptography imported takes a second or
# two on a busy two-core machine; leave a wide margin.
START_TIMEOUT = 30.0

# How long a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0

# How many collected lines a failure message quotes.
TAIL_LINES = 30


def scaled(seconds: float) -> float:
    """Stretch a deadline by the factor the environment asks for."""
    return seconds * TIMEOUT_FACTOR


def run_command(
    argv: Sequence[str | Path],
    timeout: float,
    *,
    stdin: int | IO[bytes] = subprocess.DEVNULL,
    stdout: int | IO[bytes] = subprocess.PIPE,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion within ``timeout``, capturing its stderr."""
    return subprocess.run(
        [str(arg) for arg in argv],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        timeout=scaled(timeout),
    )


class ProcessFailed(RuntimeError):
    """A helper process died or stayed silent instead of becoming ready."""


class LineCollector:
    """Read a pipe line by line in a thread; let callers wait for a line."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(
            target=self._collect, args=(stream,), name=name, daemon=True
        )
        self._thread.start()

    def _collect(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip("\r\n")
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Return the first line matching ``pattern``, waiting up to ``timeout``."""
        deadline = time.monotonic() + scaled(timeout)
        checked = 0
        with self._changed:
            while True:
                for line in self.lines[checked:]:
                    match = pattern.search(line)
                    if match:
                        return match
                checked = len(self.lines)
                if self._closed:
                    raise ProcessFailed(
                        f"{self.name} closed before printing {pattern.pattern!r}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessFailed(
                        f"{self.name} did not print {pattern.pattern!r} "
                        f"within {timeout:.0f} s"
                    )
                self._changed.wait(remaining)

    def wait_for_first_line(self, timeout: float) -> str:
        """Return the first line, waiting up to ``timeout`` for it."""
        self.wait_for(re.compile(""), timeout)
        return self.lines[0]

    def join(self, timeout: float) -> None:
        """Wait for the pipe to reach end of file."""
        self._thread.join(scaled(timeout))

    def tail(self) -> str:
        """Return the last lines collected, for failure messages."""
        with self._changed:
            return "\n".join(self.lines[-TAIL_LINES:])


class ServerProcess:
    """A long-running child whose stdout and stderr are collected by line."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            [str(arg) for arg in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self.stdout = LineCollector(self.popen.stdout, f"{name} stdout")
        self.stderr = LineCollector(self.popen.stderr, f"{name} stderr")

    @property
    def pid(self) -> int:
        """Return the child's process id."""
        return self.popen.pid

    def output(self) -> str:
        """Return the tail of both streams, labelled, for failure messages."""
        return (
            f"--- {self.name} exit status {self.popen.poll()}\n"
            f"--- stdout:\n{self.stdout.tail()}\n"
            f"--- stderr:\n{self.stderr.tail()}"
        )

    def stop(self) -> int:
        """Send SIGTERM, kill after a grace period, and return the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            status = self.popen.wait(scaled(STOP_TIMEOUT))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            status = self.popen.wait(scaled(STOP_TIMEOUT))
        self.stdout.join(STOP_TIMEOUT)
        self.stderr.join(STOP_TIMEOUT)
        return status

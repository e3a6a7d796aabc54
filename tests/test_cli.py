"""Command-line edge cases that need no server: bad names, bad settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .procs import scaled

# A CLI that fails before connecting returns well within this.
CLI_TIMEOUT = 30.0

SECRET = "cli-test-key"


def wsbridge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wsbridge ARGS`` with ``env`` added; return its outcome."""
    return subprocess.run(
        [sys.executable, "-m", "wsbridge", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "WSBRIDGE_ACCESS_KEY": SECRET, **env},
        timeout=scaled(CLI_TIMEOUT),
    )


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", " demo"])
@pytest.mark.parametrize("command", ["proxy", "status", "listen", "exec"])
def test_unusable_workspace_names_are_usage_errors(command: str, name: str) -> None:
    """A name that cannot be one URL path segment exits 2 with one line."""
    result = wsbridge(command, "--server", "ws://127.0.0.1:9", name, "--", "true")
    assert result.returncode == 2
    assert result.stderr.startswith("wsbridge: ")
    assert "invalid workspace name" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_malformed_proxy_setting_is_one_line_without_its_value() -> None:
    """A broken HTTPS_PROXY is reported as such, and its text is not echoed."""
    proxy = "garbage-with-password:hunter2"
    result = wsbridge(
        "status", "--server", "wss://127.0.0.1:9", "demo", HTTPS_PROXY=proxy
    )
    assert result.returncode == 255
    assert "proxy setting" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_closed_standard_streams_do_not_break_start_up() -> None:
    """With stdout and stderr closed, a usage error still exits 2, not 1."""
    result = subprocess.run(
        [
            "sh",
            "-c",
            'exec "$@" >&- 2>&-',
            "sh",
            sys.executable,
            "-m",
            "wsbridge",
            "status",
            "",
        ],
        capture_output=True,
        timeout=scaled(CLI_TIMEOUT),
    )
    assert result.returncode == 2

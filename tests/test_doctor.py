"""``wsbridge doctor`` against the emulator: one line per check, each a verdict.

The ssh config is always a temporary file named with ``--ssh-config``; the
real user's ``~/.ssh`` never takes part.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsbridge.sshconfig import BEGIN_MARKER, END_MARKER

from .emulator import Emulator, start_emulator, write_access_key
from .procs import scaled

# Python start-up, `ssh -G`, and one HTTP request over loopback.
CLI_TIMEOUT = 30.0

# Every line: a verdict, the check's name, what it found.
_LINE = re.compile(r"^(ok|warn|FAIL) +(\S+(?: \S+)?) {2,}\S.*$")


def run_wsbridge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the wsbridge CLI; fail on a traceback in its output."""
    result = subprocess.run(
        [sys.executable, "-m", "wsbridge", *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=scaled(CLI_TIMEOUT),
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def verdicts(output: str) -> dict[str, tuple[str, str]]:
    """Parse doctor's report into {check: (verdict, line)}, one line each."""
    report: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        match = _LINE.match(line)
        assert match, f"not a report line: {line!r}"
        verdict, name = match.groups()
        assert name not in report, f"{name} reported twice"
        report[name] = (verdict, line)
    return report


def server_flags(emulator: Emulator) -> list[str]:
    """Return the flags that address ``emulator`` with its own key."""
    return [
        "--server",
        emulator.url,
        "--access-key-file",
        str(emulator.access_key_file),
    ]


def closed_port() -> int:
    """Return a loopback port nothing listens on (it was just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Run one emulator for the module, serving ``demo``; doctor changes nothing."""
    started = start_emulator(tmp_path_factory.mktemp("emulator") / "state")
    yield started
    started.stop()
    # Shown under "Captured stdout teardown" when a test failed.
    print(started.process.output())


@pytest.fixture
def ssh_config(tmp_path: Path, emulator: Emulator) -> Path:
    """Return an ssh config with a current wsbridge block for ``emulator``."""
    config = tmp_path / "ssh" / "config"
    result = run_wsbridge("config-ssh", "--ssh-config", config, *server_flags(emulator))
    assert result.returncode == 0, result.stderr
    return config


def test_healthy_setup_after_login_passes_every_check(
    emulator: Emulator, tmp_path: Path
) -> None:
    """After login and config-ssh, doctor exits 0 and every line is ok."""
    login = run_wsbridge("login", *server_flags(emulator))
    assert login.returncode == 0, login.stderr
    config = tmp_path / "ssh" / "config"
    written = run_wsbridge("config-ssh", "--ssh-config", config)
    assert written.returncode == 0, written.stderr

    result = run_wsbridge("doctor", "--ssh-config", config)

    assert result.returncode == 0, result.stdout + result.stderr
    report = verdicts(result.stdout)
    assert {verdict for verdict, _ in report.values()} == {"ok"}, result.stdout
    assert set(report) >= {
        "ssh client",
        "ssh config",
        "shadowing",
        "profile",
        "tls",
        "proxy",
        "server",
        "clock",
    }
    assert "OpenSSH_" in report["ssh client"][1]
    assert "'default'" in report["profile"][1]
    assert "answers and accepts the key" in report["server"][1]
    assert emulator.access_key not in result.stdout + result.stderr


def test_wrong_key_fails_the_server_check(
    emulator: Emulator, ssh_config: Path, tmp_path: Path
) -> None:
    """A key the server refuses gives FAIL on the server line and exit 1."""
    wrong = write_access_key(tmp_path / "wrong-key")

    result = run_wsbridge(
        "doctor",
        "--ssh-config",
        ssh_config,
        "--server",
        emulator.url,
        "--access-key-file",
        wrong,
    )

    assert result.returncode == 1
    report = verdicts(result.stdout)
    verdict, line = report["server"]
    assert verdict == "FAIL"
    assert "rejected the access key (HTTP 401)" in line
    assert "fix: wsbridge login" in line
    assert report["ssh config"][0] == "ok"
    assert wrong.read_text().strip() not in result.stdout + result.stderr


def test_missing_block_fails_with_the_fix(emulator: Emulator, tmp_path: Path) -> None:
    """A config without the block gives FAIL naming ``wsbridge config-ssh``."""
    config = tmp_path / "ssh" / "config"
    config.parent.mkdir()
    config.write_text("Host build\n    Port 2222\n")

    result = run_wsbridge("doctor", "--ssh-config", config, *server_flags(emulator))

    assert result.returncode == 1
    report = verdicts(result.stdout)
    verdict, line = report["ssh config"]
    assert verdict == "FAIL"
    assert f"no wsbridge block in {config}" in line
    assert "fix: run: wsbridge config-ssh" in line
    assert report["server"][0] == "ok"


def test_missing_config_file_fails_with_the_fix(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A config file that does not exist gives FAIL naming the same fix."""
    config = tmp_path / "ssh" / "config"

    result = run_wsbridge("doctor", "--ssh-config", config, *server_flags(emulator))

    assert result.returncode == 1
    verdict, line = verdicts(result.stdout)["ssh config"]
    assert verdict == "FAIL"
    assert "does not exist" in line and "wsbridge config-ssh" in line


def test_unreachable_server_fails_the_server_check(
    ssh_config: Path, tmp_path: Path
) -> None:
    """A closed port gives FAIL on the server line and exit 1."""
    key = write_access_key(tmp_path / "key")
    server = f"ws://127.0.0.1:{closed_port()}"

    result = run_wsbridge(
        "doctor",
        "--ssh-config",
        ssh_config,
        "--server",
        server,
        "--access-key-file",
        key,
    )

    assert result.returncode == 1
    verdict, line = verdicts(result.stdout)["server"]
    assert verdict == "FAIL"
    assert "cannot connect" in line


def test_shadowed_block_fails_the_shadowing_check(
    emulator: Emulator, ssh_config: Path
) -> None:
    """A user ``Host *`` ProxyCommand placed before the block is a FAIL."""
    ssh_config.write_text(
        "Host *\n    ProxyCommand nc %h %p\n\n" + ssh_config.read_text()
    )

    result = run_wsbridge("doctor", "--ssh-config", ssh_config, *server_flags(emulator))

    assert result.returncode == 1
    verdict, line = verdicts(result.stdout)["shadowing"]
    assert verdict == "FAIL"
    assert "nc %h %p" in line


def test_per_workspace_block_is_not_reported_as_shadowed(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A --no-wildcard block passes the shadowing check too."""
    config = tmp_path / "ssh" / "config"
    written = run_wsbridge(
        "config-ssh", "--ssh-config", config, "--no-wildcard", *server_flags(emulator)
    )
    assert written.returncode == 0, written.stderr

    result = run_wsbridge("doctor", "--ssh-config", config, *server_flags(emulator))

    assert result.returncode == 0, result.stdout
    verdict, line = verdicts(result.stdout)["shadowing"]
    assert verdict == "ok"
    assert "demo.devpod" in line


def test_block_running_a_missing_program_fails(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A block whose ProxyCommand program is gone (uninstalled) is a FAIL."""
    config = tmp_path / "ssh" / "config"
    config.parent.mkdir()
    missing = tmp_path / "gone" / "wsbridge"
    config.write_text(
        f"{BEGIN_MARKER}\nHost *.devpod\n"
        f"    ProxyCommand {missing} proxy --host-suffix devpod %n\n{END_MARKER}\n"
    )

    result = run_wsbridge("doctor", "--ssh-config", config, *server_flags(emulator))

    assert result.returncode == 1
    verdict, line = verdicts(result.stdout)["ssh config"]
    assert verdict == "FAIL"
    assert f"runs {missing}, which is not executable" in line


def test_block_with_an_unbalanced_quote_fails_without_a_traceback(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A hand-broken ProxyCommand quote is a FAIL line, not a crash."""
    config = tmp_path / "ssh" / "config"
    config.parent.mkdir()
    config.write_text(
        f"{BEGIN_MARKER}\nHost *.devpod\n"
        f"    ProxyCommand '/opt/wsbridge proxy %n\n{END_MARKER}\n"
    )

    result = run_wsbridge("doctor", "--ssh-config", config, *server_flags(emulator))

    assert result.returncode == 1
    verdict, line = verdicts(result.stdout)["ssh config"]
    assert verdict == "FAIL"
    assert "runs nothing" in line

"""``wsbridge login`` and ``logout`` against the emulator, as a user runs them.

Every command runs as a subprocess with the test's own XDG directories (see
``conftest.py``), and every byte it prints, on stdout or stderr, is checked
for the access key.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .emulator import Emulator, start_emulator, write_access_key
from .procs import run_command

# Python start-up, one HTTP request or websocket over loopback.
CLI_TIMEOUT = 30.0


@dataclass
class Cli:
    """Runs ``python -m wsbridge`` and checks each output for the key."""

    secrets: list[str]
    outputs: list[bytes] = field(default_factory=list)

    def __call__(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one command; fail the test if it leaks a key or a traceback."""
        result = subprocess.run(
            [sys.executable, "-m", "wsbridge", *args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env={**os.environ, **(env or {})},
            timeout=CLI_TIMEOUT,
        )
        for output in (result.stdout, result.stderr):
            self.outputs.append(output)
            text = output.decode(errors="replace")
            assert "Traceback" not in text, text
            for secret in self.secrets:
                assert secret not in text, f"the key leaked in: {text}"
        return result


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Run one emulator for these tests; logging in changes nothing on it."""
    emulator = start_emulator(tmp_path_factory.mktemp("login") / "state")
    yield emulator
    status = emulator.stop()
    # Printed output shows under "Captured stdout teardown" when a test fails.
    print(emulator.process.output())
    assert status == 0, "the emulator did not stop cleanly"


@pytest.fixture
def wrong_key_file(tmp_path: Path) -> Path:
    """Return a key file holding a key the emulator does not accept."""
    return write_access_key(tmp_path / "wrong-key")


@pytest.fixture
def cli(emulator: Emulator, wrong_key_file: Path) -> Cli:
    """Return a CLI runner that watches for both the right and the wrong key."""
    return Cli([emulator.access_key, wrong_key_file.read_text().strip()])


def profiles_file() -> Path:
    """Return where this test's profiles are saved (XDG_CONFIG_HOME is ours)."""
    return Path(os.environ["XDG_CONFIG_HOME"]) / "wsbridge" / "profiles.toml"


def saved_profiles() -> dict[str, dict[str, str]]:
    """Return the saved profiles as TOML tables, by name."""
    document = tomllib.loads(profiles_file().read_text())
    profiles: dict[str, dict[str, str]] = document.get("profiles", {})
    return profiles


def login(cli: Cli, emulator: Emulator, *args: str) -> None:
    """Log in to ``emulator`` with its key file, checking that it worked."""
    result = cli(
        "login",
        "--server",
        emulator.url,
        "--access-key-file",
        str(emulator.access_key_file),
        *args,
    )
    assert result.returncode == 0, result.stderr


def test_login_saves_a_profile_readable_by_its_owner_alone(
    cli: Cli, emulator: Emulator
) -> None:
    """The profile holds server and key, in a 0600 file in a 0700 directory."""
    login(cli, emulator)

    mode = stat.S_IMODE(profiles_file().stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(profiles_file().parent.stat().st_mode) == 0o700
    profile = saved_profiles()["default"]
    assert profile["server"] == emulator.url
    assert profile["access_key"] == emulator.access_key


def test_login_reads_the_key_from_stdin_given_dash(
    cli: Cli, emulator: Emulator
) -> None:
    """``--access-key-file -`` reads the key from standard input."""
    result = cli(
        "login",
        "--server",
        emulator.url,
        "--access-key-file",
        "-",
        "--profile",
        "piped",
        stdin=emulator.access_key_file.read_bytes(),
    )

    assert result.returncode == 0, result.stderr
    assert saved_profiles()["piped"]["access_key"] == emulator.access_key


def test_login_with_a_wrong_key_is_refused_and_saves_nothing(
    cli: Cli, emulator: Emulator, wrong_key_file: Path
) -> None:
    """A key the server refuses exits 255 with one message; no file appears."""
    result = cli(
        "login",
        "-vv",
        "--server",
        emulator.url,
        "--access-key-file",
        str(wrong_key_file),
    )

    assert result.returncode == 255
    assert result.stdout == b""
    assert "rejected the access key" in result.stderr.decode()
    assert not profiles_file().exists()


def test_saved_login_is_used_without_server_or_key(
    cli: Cli, emulator: Emulator
) -> None:
    """After ``login``, ``status demo`` needs no flags, at any verbosity."""
    login(cli, emulator, "-vv")

    for verbosity in ([], ["-v"], ["-vv"]):
        result = cli("status", *verbosity, "demo")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"Running\n"
    # -vv really is verbose, so the check for the key above meant something.
    assert b"connect" in result.stderr


def test_named_profile_is_selected_by_flag_or_environment(
    cli: Cli, emulator: Emulator
) -> None:
    """A profile other than ``default`` applies only when selected."""
    login(cli, emulator, "--profile", "work")

    by_flag = cli("status", "--profile", "work", "demo")
    by_env = cli("status", "demo", env={"WSBRIDGE_PROFILE": "work"})
    unselected = cli("status", "demo")
    missing = cli("status", "--profile", "home", "demo")

    assert (by_flag.returncode, by_flag.stdout) == (0, b"Running\n"), by_flag.stderr
    assert (by_env.returncode, by_env.stdout) == (0, b"Running\n"), by_env.stderr
    assert unselected.returncode == 2, unselected.stderr
    assert missing.returncode == 2
    assert "no saved profile named 'home'" in missing.stderr.decode()


def test_profile_key_is_not_sent_to_a_server_from_the_environment(
    cli: Cli, emulator: Emulator
) -> None:
    """``WSBRIDGE_SERVER`` overrides the profile, whose key stays with its server."""
    login(cli, emulator)

    result = cli("status", "demo", env={"WSBRIDGE_SERVER": "ws://127.0.0.1:9"})

    assert result.returncode == 2
    assert "no access key" in result.stderr.decode()


def test_logout_removes_the_profile(cli: Cli, emulator: Emulator) -> None:
    """After ``logout`` the profile is gone, and a second logout says so."""
    login(cli, emulator)

    first = cli("logout", "-v")
    second = cli("logout")

    assert first.returncode == 0, first.stderr
    assert "default" not in saved_profiles()
    assert second.returncode == 2
    assert "no saved profile named 'default'" in second.stderr.decode()


def test_logout_selects_the_profile_like_other_commands(
    cli: Cli, emulator: Emulator
) -> None:
    """``WSBRIDGE_PROFILE`` and ``--profile`` pick which profile ``logout`` removes."""
    login(cli, emulator, "--profile", "a")
    login(cli, emulator, "--profile", "b")

    by_env = cli("logout", env={"WSBRIDGE_PROFILE": "a"})
    remaining = set(saved_profiles())
    by_flag = cli("logout", "--profile", "b")

    assert by_env.returncode == 0 and by_flag.returncode == 0
    assert remaining == {"b"}
    assert saved_profiles() == {}
    assert stat.S_IMODE(profiles_file().stat().st_mode) == 0o600


def test_login_without_a_terminal_or_key_asks_nothing() -> None:
    """With no key given and no terminal, ``login`` fails with advice at once."""
    result = run_command(
        [sys.executable, "-m", "wsbridge", "login", "--server", "ws://127.0.0.1:9"],
        CLI_TIMEOUT,
    )

    assert result.returncode == 2
    assert "--access-key-file" in result.stderr.decode()
    assert not profiles_file().exists()

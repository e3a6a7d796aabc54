"""Fixtures shared by the end-to-end tests: keys, sshd, emulators, OpenSSH."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .emulator import Emulator, EmulatorFactory, TLSFiles, start_emulator
from .openssh import OpenSSH
from .sshd import Sshd, generate_key, start_sshd

# Outside settings that would change what the proxy does under test: a
# developer's own server, project or key, a saved profile, an ssh agent.
_LEAKY_ENV_PREFIXES = ("WSBRIDGE_",)
_LEAKY_ENV_NAMES = ("SSH_AUTH_SOCK", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
_XDG_DIRS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's wsbridge settings and ssh agent out of every test."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_ENV_PREFIXES) or name.upper() in _LEAKY_ENV_NAMES:
            monkeypatch.delenv(name)
    for name in _XDG_DIRS:
        monkeypatch.setenv(name, str(tmp_path / "xdg" / name.lower()))
    # wsbridge looks for ~/.ssh/id_* keys; the developer's must not count.
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture
def empty_home(tmp_path: Path) -> Path:
    """Return the empty directory that HOME points at during the test."""
    return tmp_path / "home"


@pytest.fixture(scope="session")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the private half of the SSH key pair the tests log in with."""
    return generate_key(tmp_path_factory.mktemp("user") / "id_ed25519")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, user_key: Path) -> Iterator[Sshd]:
    """Run one real OpenSSH sshd for the session, accepting ``user_key``."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    server.authorize(Path(f"{user_key}.pub"))
    yield server
    server.stop()


@pytest.fixture
def emulator_factory(tmp_path: Path, user_key: Path) -> Iterator[EmulatorFactory]:
    """Start emulators on demand; stop them, and show their logs, afterwards."""
    started: list[Emulator] = []

    def start(
        *,
        workspaces: tuple[str, ...] = (),
        ssh_upstream: str | None = None,
        tls: TLSFiles | None = None,
        lifecycle_delay: float | None = None,
    ) -> Emulator:
        state_dir = tmp_path / f"emulator-{len(started)}" / "state"
        emulator = start_emulator(
            state_dir,
            workspaces=workspaces,
            ssh_upstream=ssh_upstream,
            tls=tls,
            lifecycle_delay=lifecycle_delay,
        )
        started.append(emulator)
        if ssh_upstream is None:
            emulator.authorize(Path(f"{user_key}.pub"))
        return emulator

    yield start

    crashed = []
    for emulator in started:
        if emulator.process.popen.poll() is not None:
            crashed.append(emulator.process.output())
        emulator.stop()
        # Printed output shows under "Captured stdout teardown" when a test fails.
        print(emulator.process.output())
    assert not crashed, "the emulator exited during the test:\n" + "\n".join(crashed)


@pytest.fixture
def openssh(tmp_path: Path, user_key: Path) -> OpenSSH:
    """Return an OpenSSH command builder with this test's own known_hosts."""
    return OpenSSH(identity=user_key, known_hosts=tmp_path / "known_hosts")

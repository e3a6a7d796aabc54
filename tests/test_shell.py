"""``wsbridge shell`` in a real terminal: tmux drives it against the emulator.

Each test starts a private tmux server with one pane running ``sh``, types a
``wsbridge shell`` command line into it, and reads the screen back with
``capture-pane``. The command line also writes wsbridge's exit status and
``stty -a`` to files, from the same shell and terminal, after wsbridge exits.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .emulator import Emulator, EmulatorFactory
from .procs import scaled
from .remote import remote_argv

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

# Python start-up, websocket, SSH handshake and a login shell on a busy machine.
SESSION_TIMEOUT = 60.0

# How long one tmux command may take.
TMUX_TIMEOUT = 10.0

# How often the screen is read while waiting for something to appear.
POLL_INTERVAL = 0.05

INITIAL_SIZE = (160, 40)
RESIZED_SIZE = (120, 30)


@dataclass
class Pane:
    """A tmux pane holding a local shell, and the files it reports into."""

    socket: Path
    tty: str
    status_file: Path
    stty_file: Path

    def tmux(self, *args: str) -> str:
        """Run a tmux command against this pane's private server."""
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            check=True,
            timeout=scaled(TMUX_TIMEOUT),
        )
        return result.stdout.decode()

    def type_line(self, text: str) -> None:
        """Type ``text`` literally, then Enter."""
        self.tmux("send-keys", "-t", "test", "-l", text)
        self.tmux("send-keys", "-t", "test", "Enter")

    def screen_lines(self) -> list[str]:
        """Return the pane's history and screen, wrapped lines joined."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "test")
        return [line.rstrip() for line in text.splitlines()]

    def wait_for_line(self, line: str) -> None:
        """Wait until a whole screen line reads exactly ``line``."""
        wait_until(
            lambda: line in self.screen_lines(),
            f"the line {line!r}",
            lambda: "\n".join(self.screen_lines()),
        )

    def in_raw_mode(self) -> bool:
        """Tell whether the pane's terminal has line editing turned off."""
        descriptor = os.open(self.tty, os.O_RDONLY | os.O_NOCTTY)
        try:
            local_flags = termios.tcgetattr(descriptor)[3]
        finally:
            os.close(descriptor)
        return not local_flags & termios.ICANON

    def start_shell(self, emulator: Emulator, key: Path, pipe: str = "") -> None:
        """Type a ``wsbridge shell`` line; wait until it holds the terminal raw.

        ``pipe``, if given, is a shell pipeline stage that wsbridge's stdout
        goes through; the recorded status is still wsbridge's own.
        """
        argv = remote_argv("shell", emulator, options=["-i", key])
        status = shlex.quote(str(self.status_file))
        stty = shlex.quote(str(self.stty_file))
        shell_line = shlex.join(argv)
        if pipe:
            shell_line = f"{{ {shell_line}; echo $? > {status}; }} | {pipe}"
        else:
            shell_line = f"{shell_line}; echo $? > {status}"
        # stty output is renamed into place so that its existence means complete.
        self.type_line(f"{shell_line}; stty -a > {stty}.tmp; mv {stty}.tmp {stty}")
        # Keys typed after raw mode is on go to the remote shell, which buffers
        # them until it reads; before that, the local shell would take them.
        wait_until(
            self.in_raw_mode,
            "wsbridge to put the terminal in raw mode",
            lambda: "\n".join(self.screen_lines()),
        )

    def wait_for_exit(self) -> tuple[int, str]:
        """Wait for wsbridge to exit; return its status and the ``stty -a`` after."""
        wait_until(
            self.stty_file.exists,
            "wsbridge to exit",
            lambda: "\n".join(self.screen_lines()),
        )
        return int(self.status_file.read_text()), self.stty_file.read_text()


def wait_until(
    condition: Callable[[], bool], what: str, describe: Callable[[], str]
) -> None:
    """Poll ``condition`` until it holds; at the deadline, fail with ``describe()``."""
    deadline = time.monotonic() + scaled(SESSION_TIMEOUT)
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; the pane shows:\n{describe()}")
        time.sleep(POLL_INTERVAL)


def stty_flags(stty_output: str) -> set[str]:
    """Return the words of ``stty -a`` output, such as ``icanon`` or ``-echo``."""
    return set(re.split(r"[\s;]+", stty_output))


@pytest.fixture
def pane(tmp_path: Path, empty_home: Path) -> Iterator[Pane]:
    """Start a private tmux server with one ``sh`` pane; kill it afterwards."""
    # A socket of its own keeps the developer's tmux sessions out of reach.
    socket = tmp_path / "tmux.sock"
    # The pane inherits this environment: the test's HOME and XDG directories.
    environment = dict(os.environ)
    environment.pop("TMUX", None)
    columns, rows = INITIAL_SIZE
    argv = ["tmux", "-S", str(socket), "-f", "/dev/null", "new-session", "-d"]
    argv += ["-s", "test", "-x", str(columns), "-y", str(rows)]
    argv.append("env PS1='local$ ' sh")
    subprocess.run(
        argv,
        env=environment,
        check=True,
        timeout=scaled(TMUX_TIMEOUT),
    )
    pane = Pane(socket, "", tmp_path / "status", tmp_path / "stty")
    try:
        tty = pane.tmux("display-message", "-p", "-t", "test", "#{pane_tty}")
        pane.tty = tty.strip()
        yield pane
    finally:
        subprocess.run(
            ["tmux", "-S", str(socket), "kill-server"],
            capture_output=True,
            timeout=scaled(TMUX_TIMEOUT),
        )


def test_shell_runs_commands_follows_resizes_and_exits_with_the_status(
    pane: Pane, emulator_factory: EmulatorFactory, user_key: Path
) -> None:
    """Typed commands run remotely, resizes reach the PTY, ``exit 3`` gives 3."""
    pane.start_shell(emulator_factory(), user_key)

    pane.type_line("echo $((6*7))")
    pane.wait_for_line("42")

    pane.type_line("stty size")
    pane.wait_for_line(f"{INITIAL_SIZE[1]} {INITIAL_SIZE[0]}")

    columns, rows = RESIZED_SIZE
    pane.tmux("resize-window", "-t", "test", "-x", str(columns), "-y", str(rows))
    pane.type_line("stty size")
    pane.wait_for_line(f"{rows} {columns}")

    pane.type_line("exit 3")
    status, stty_after = pane.wait_for_exit()
    assert status == 3
    flags = stty_flags(stty_after)
    assert {"icanon", "echo", "isig"} <= flags, stty_after
    assert not {"-icanon", "-echo", "-isig"} & flags, stty_after


def test_shell_with_stdout_piped_takes_the_size_from_the_terminal(
    pane: Pane, emulator_factory: EmulatorFactory, user_key: Path
) -> None:
    """With stdout through ``cat``, the PTY still gets the pane's real size."""
    pane.start_shell(emulator_factory(), user_key, pipe="cat")

    pane.type_line("stty size")
    pane.wait_for_line(f"{INITIAL_SIZE[1]} {INITIAL_SIZE[0]}")

    pane.type_line("exit 0")
    status, _ = pane.wait_for_exit()
    assert status == 0


def test_ctrl_c_interrupts_the_remote_command_not_wsbridge(
    pane: Pane, emulator_factory: EmulatorFactory, user_key: Path
) -> None:
    """Ctrl-C reaches the remote PTY: it stops ``sleep`` and the session goes on."""
    pane.start_shell(emulator_factory(), user_key)

    # The echo shows that the remote shell has read the line and runs it.
    pane.type_line("echo sleeping; sleep 600")
    pane.wait_for_line("sleeping")
    pane.tmux("send-keys", "-t", "test", "C-c")
    pane.type_line("echo still-connected")
    pane.wait_for_line("still-connected")

    pane.type_line("exit 4")
    status, _ = pane.wait_for_exit()
    assert status == 4


def test_tilde_dot_after_enter_disconnects_with_255(
    pane: Pane, emulator_factory: EmulatorFactory, user_key: Path
) -> None:
    """Enter then ``~.`` ends the session with 255 and a cooked terminal."""
    pane.start_shell(emulator_factory(), user_key)

    pane.type_line("echo before-escape")
    pane.wait_for_line("before-escape")
    pane.tmux("send-keys", "-t", "test", "Enter")
    pane.tmux("send-keys", "-t", "test", "-l", "~.")

    status, stty_after = pane.wait_for_exit()
    assert status == 255
    assert "wsbridge: connection closed (~.)" in pane.screen_lines()
    flags = stty_flags(stty_after)
    assert {"icanon", "echo", "isig"} <= flags, stty_after


def test_shell_without_a_terminal_runs_without_a_pty(
    emulator_factory: EmulatorFactory, user_key: Path
) -> None:
    """With stdin not a terminal, ``shell -- CMD`` runs CMD with no PTY."""
    emulator = emulator_factory()
    result = subprocess.run(
        remote_argv(
            "shell",
            emulator,
            ["test -t 0 && echo pty || echo no-pty"],
            options=["-i", user_key],
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=scaled(SESSION_TIMEOUT),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"no-pty\n"

"""``wsbridge up`` on a real terminal (tmux), and the same command piped.

A private tmux server runs a bare bash in a pane of fixed size; the test
types commands into it and reads the screen with ``capture-pane``. Waiting
for the screen is polling for a condition with a deadline, never a sleep
that hopes the program is done.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .emulator import Emulator, start_emulator
from .procs import scaled

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

# Long enough that several redraws of the progress line can be seen.
LIFECYCLE_DELAY = 2.0

# Python start-up, the action's delay and the loopback round trips.
COMMAND_TIMEOUT = 30.0

# How often the screen is read while waiting for it to change.
POLL_INTERVAL = 0.05

# Each tmux call returns at once; this only bounds a wedged server.
TMUX_TIMEOUT = 10.0

PANE_WIDTH, PANE_HEIGHT = 100, 30

PROMPT = "wsb-test$"

# The progress line: spinner, current step, two spaces, elapsed seconds.
PROGRESS_LINE = re.compile(
    r"^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] (?P<step>\S.*?)  (?P<elapsed>\d+)s$"
)
SPINNER = re.compile("[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]")


@dataclass
class Pane:
    """A tmux pane running bash, private to one test."""

    socket_name: str

    def tmux(self, *args: str) -> str:
        """Run a tmux command against this test's server; return its stdout."""
        result = subprocess.run(
            ["tmux", "-L", self.socket_name, *args],
            capture_output=True,
            text=True,
            timeout=scaled(TMUX_TIMEOUT),
            check=True,
        )
        return result.stdout

    def type(self, command: str) -> None:
        """Type ``command`` at the prompt and press Enter."""
        self.tmux("send-keys", "-t", "main", "-l", command)
        self.tmux("send-keys", "-t", "main", "Enter")

    def screen(self, *, escapes: bool = False) -> list[str]:
        """Return the visible lines of the pane, optionally with SGR escapes."""
        flags = ["-p", "-e"] if escapes else ["-p"]
        return self.tmux("capture-pane", *flags, "-t", "main").splitlines()

    def wait_for(
        self, condition: Callable[[list[str]], bool], what: str, timeout: float
    ) -> list[str]:
        """Poll the screen until ``condition`` holds; return that screen."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                shown = "\n".join(screen)
                raise AssertionError(f"{what} not seen within {timeout} s:\n{shown}")
            time.sleep(POLL_INTERVAL)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    """Start a private tmux server with one bash pane; kill it afterwards."""
    pane = Pane(f"wsbridge-test-{secrets.token_hex(6)}")
    env = {
        **{key: value for key, value in os.environ.items() if key != "TMUX"},
        "TERM": "xterm-256color",
        "HISTFILE": "/dev/null",
    }
    subprocess.run(
        [
            "tmux", "-L", pane.socket_name, "-u", "-f", "/dev/null",
            "new-session", "-d", "-s", "main",
            "-x", str(PANE_WIDTH), "-y", str(PANE_HEIGHT),
            "-c", str(tmp_path),
            f"env {shlex.quote(f'PS1={PROMPT} ')} bash --norc --noprofile",
        ],
        env=env,
        check=True,
        timeout=scaled(TMUX_TIMEOUT),
    )  # fmt: skip
    try:
        pane.wait_for(lambda screen: PROMPT in "".join(screen), "prompt", TMUX_TIMEOUT)
        yield pane
    finally:
        subprocess.run(
            ["tmux", "-L", pane.socket_name, "kill-server"],
            capture_output=True,
            timeout=scaled(TMUX_TIMEOUT),
        )


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Run one slow emulator for these tests; each creates its own workspace."""
    state_dir = tmp_path_factory.mktemp("terminal") / "state"
    emulator = start_emulator(state_dir, lifecycle_delay=LIFECYCLE_DELAY)
    yield emulator
    status = emulator.stop()
    # Printed output shows under "Captured stdout teardown" when a test fails.
    print(emulator.process.output())
    assert status == 0, "the emulator did not stop cleanly"


@pytest.fixture
def up_script(tmp_path: Path, emulator: Emulator) -> str:
    """Write ``up.sh WORKSPACE`` for the slow emulator; return how to call it."""
    argv = [
        sys.executable, "-m", "wsbridge", "up",
        "--server", emulator.url,
        "--access-key-file", str(emulator.access_key_file),
    ]  # fmt: skip
    (tmp_path / "up.sh").write_text(f'exec {shlex.join(argv)} "$1"\n')
    return "sh up.sh"


def progress_shows_a_logged_step(screen: list[str]) -> bool:
    """Tell whether the progress line names a step the log above it shows."""
    steps = [match["step"] for line in screen if (match := PROGRESS_LINE.match(line))]
    return any(
        line.startswith("info ") and line.endswith(step)
        for step in steps
        for line in screen
    )


def finished(marker: str) -> Callable[[list[str]], bool]:
    """Return a condition: a ``marker=N`` line, then the prompt, are on screen.

    The terminal echoes a Ctrl-C as ``^C`` where the cursor was, so the
    marker may follow one.
    """
    pattern = re.compile(rf"^(\^C)?{marker}=\d+$")

    def condition(screen: list[str]) -> bool:
        lines = [line for line in screen if line.strip()]
        return (
            len(lines) >= 2
            and lines[-1].rstrip() == PROMPT
            and pattern.match(lines[-2]) is not None
        )

    return condition


def test_up_on_a_terminal_shows_progress_then_leaves_a_clean_screen(
    pane: Pane, up_script: str
) -> None:
    """A live progress line shows during ``up`` and is gone when it ends."""
    pane.type(f'{up_script} fresh-one; echo "exit=$?"')

    pane.wait_for(
        progress_shows_a_logged_step, "a progress line with a step", COMMAND_TIMEOUT
    )
    after = pane.wait_for(finished("exit"), "the end of up", COMMAND_TIMEOUT)

    assert "exit=0" in after
    assert not any(SPINNER.search(line) for line in after), "\n".join(after)
    assert not any(PROGRESS_LINE.match(line) for line in after)
    # The log itself stays, coloured by level.
    records = [line for line in after if line.startswith("info ")]
    assert records, "\n".join(after)
    assert any("\x1b[" in line for line in pane.screen(escapes=True))


def test_up_piped_writes_plain_text_without_escape_sequences(
    pane: Pane, up_script: str, tmp_path: Path
) -> None:
    """The same ``up`` piped through ``cat`` has no escapes and no spinner."""
    pane.type(
        f'{up_script} fresh-two 2>&1 | cat > piped.txt; echo "piped=${{PIPESTATUS[0]}}"'
    )

    after = pane.wait_for(finished("piped"), "the end of up", COMMAND_TIMEOUT)

    assert "piped=0" in after
    output = (tmp_path / "piped.txt").read_bytes()
    assert b"\x1b" not in output
    assert not SPINNER.search(output.decode())
    assert re.search(rb"^info +\S", output, re.MULTILINE), output


def test_ctrl_c_during_up_on_a_terminal_erases_the_progress_line(
    pane: Pane, up_script: str
) -> None:
    """Ctrl-C while the progress line shows exits 130 and leaves no trace of it."""
    pane.type(f'{up_script} fresh-three; echo "exit=$?"')
    pane.wait_for(
        progress_shows_a_logged_step, "a progress line with a step", COMMAND_TIMEOUT
    )

    pane.tmux("send-keys", "-t", "main", "C-c")
    after = pane.wait_for(finished("exit"), "the end of up", COMMAND_TIMEOUT)

    assert "^Cexit=130" in after, "\n".join(after)
    assert not any(SPINNER.search(line) for line in after), "\n".join(after)

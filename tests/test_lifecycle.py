"""The lifecycle commands (``up``, ``stop``, ``status``) run as a user runs them.

The real CLI runs as a subprocess against a fault-injecting peer that sends
chosen frames (lines split across frames, several lines in one frame, a
character split between frames, exit codes of every shape), and against the
emulator for auto-start through ``wsbridge proxy`` with real OpenSSH.
Output goes to pipes, so the CLI renders plain text: ``LEVEL   message``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence

import pytest

from .emulator import DEFAULT_WORKSPACE, Emulator, EmulatorFactory
from .faulty_peer import (
    FaultyPeer,
    by_action,
    hold_open,
    play,
    stderr_frame,
    stdout_frame,
)
from .openssh import OpenSSH, proxy_argv, write_known_hosts
from .procs import START_TIMEOUT, ServerProcess, run_command, scaled
from .proxy_process import (
    PROXY_TIMEOUT,
    SSH_BANNER_PREFIX,
    open_stdin,
    read_at_least,
    run_proxy,
)

# Python start-up, a loopback websocket and a few frames.
CLI_TIMEOUT = 30.0

# How long an interrupted command may take to close and exit.
EXIT_TIMEOUT = 15.0

# An ssh command through the proxy, auto-start included.
SSH_TIMEOUT = 60.0

# The emulator's pace for lifecycle actions: short so that tests stay fast,
# or long enough that a second client surely finds the workspace Busy.
FAST_LIFECYCLE = 0.3
SLOW_LIFECYCLE = 2.0

# What the tests present as the access key; the peer does not check it.
ACCESS_KEY = "test-key-4f1c9a"

# A status object with spacing and a field of its own, so "as received"
# cannot be confused with "re-serialised".
STATUS_LINE = (
    '{"id": "demo", "context":"default", "provider":"p", '
    '"state":"Stopped", "extra":[1, 2]}'
)


def log_line(message: str, level: str | None = "info") -> bytes:
    """Return one JSON log line as the platform's DevPod writes it."""
    record: dict[str, str] = {"time": "2026-12-03T15:41:56.123Z", "message": message}
    if level is not None:
        record["level"] = level
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def cli_argv(command: str, peer: FaultyPeer, *args: str) -> list[str]:
    """Return the argv of ``wsbridge COMMAND --server PEER ARGS... demo``."""
    return [
        sys.executable,
        "-m",
        "wsbridge",
        command,
        "--server",
        peer.url,
        *args,
        "demo",
    ]


def key_env() -> dict[str, str]:
    """Return this process's environment with the access key added."""
    return {**os.environ, "WSBRIDGE_ACCESS_KEY": ACCESS_KEY}


def run_against(
    messages: Sequence[bytes],
    command: str = "up",
    *args: str,
    code: int = 0,
    not_found: Sequence[str] = (),
) -> tuple[subprocess.CompletedProcess[bytes], FaultyPeer]:
    """Run the CLI against a peer that plays ``messages`` then exits ``code``."""
    with FaultyPeer(play(messages, code), not_found=not_found) as peer:
        result = run_command(cli_argv(command, peer, *args), CLI_TIMEOUT, env=key_env())
    text = result.stdout + result.stderr
    assert b"Traceback" not in text, text.decode(errors="replace")
    assert ACCESS_KEY.encode() not in text
    return result, peer


def lines(output: bytes) -> list[str]:
    """Return the lines of a captured stream."""
    return output.decode().splitlines()


def query_of(path: str) -> dict[str, str]:
    """Return the query parameters of a request path, one value each."""
    query = urllib.parse.urlsplit(path).query
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


# --- lines that do not align with frames ------------------------------------


def test_line_split_over_three_frames_is_shown_once_whole() -> None:
    """A log line cut into three frames comes out as one record."""
    line = log_line("Creating devcontainer...")
    frames = [line[:5], line[5:40], line[40:]]

    result, _ = run_against([stdout_frame(part) for part in frames])

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["info    Creating devcontainer..."]


def test_two_lines_in_one_frame_are_shown_as_two_records() -> None:
    """One frame carrying two log lines shows both, in order."""
    frame = stdout_frame(log_line("Pulling image") + log_line("Image pulled"))

    result, _ = run_against([frame])

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["info    Pulling image", "info    Image pulled"]


def test_character_split_between_frames_comes_out_whole() -> None:
    """A four-byte character cut between frames is shown intact, not as U+FFFD."""
    line = log_line("Größe geprüft 🚀 fertig")
    cut = line.index("🚀".encode()) + 2

    result, _ = run_against([stdout_frame(line[:cut]), stdout_frame(line[cut:])])

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["info    Größe geprüft 🚀 fertig"]


def test_line_that_is_not_a_log_record_is_shown_as_it_came() -> None:
    """Plain text and JSON without ``message`` pass through unchanged."""
    frame = stdout_frame(b"plain text, not JSON\n" + STATUS_LINE.encode() + b"\n")

    result, _ = run_against([frame])

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["plain text, not JSON", STATUS_LINE]


def test_record_without_level_is_shown_as_panic() -> None:
    """A log record with no ``level`` is a panic, as DevPod's logger means it."""
    result, _ = run_against([stdout_frame(log_line("out of memory", level=None))])

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["panic   out of memory"]


def test_stdout_and_stderr_lines_stay_on_their_own_streams() -> None:
    """Interleaved stdout and stderr frames, lines split across both, stay apart."""
    first_out, first_err = log_line("step one"), log_line("careful", "warning")
    messages = [
        stdout_frame(first_out[:10]),
        stderr_frame(first_err[:7]),
        stdout_frame(first_out[10:] + log_line("step two")[:3]),
        stderr_frame(first_err[7:] + log_line("broken", "error")),
        stdout_frame(log_line("step two")[3:]),
    ]

    result, _ = run_against(messages)

    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["info    step one", "info    step two"]
    assert lines(result.stderr) == ["warning careful", "error   broken"]


def test_debug_records_are_shown_only_with_verbose() -> None:
    """Debug and trace records are hidden by default and shown with ``-v``."""
    frame = stdout_frame(
        log_line("resolving", "debug") + log_line("raw", "trace") + log_line("ready")
    )

    quiet, _ = run_against([frame])
    verbose, _ = run_against([frame], "up", "-v")

    assert lines(quiet.stdout) == ["info    ready"]
    assert lines(verbose.stdout) == [
        "debug   resolving",
        "trace   raw",
        "info    ready",
    ]


def test_control_characters_from_the_server_are_escaped() -> None:
    """An escape sequence in a message reaches a pipe as visible text."""
    result, _ = run_against([stdout_frame(log_line("red \x1b[31m alert\x07"))])

    assert b"\x1b" not in result.stdout and b"\x07" not in result.stdout
    assert lines(result.stdout) == ["info    red \\x1b[31m alert\\x07"]


def test_last_line_without_newline_is_shown() -> None:
    """A final line the server did not terminate is still shown."""
    result, _ = run_against([stdout_frame(log_line("done").rstrip(b"\n"))])

    assert lines(result.stdout) == ["info    done"]


# --- exit codes and machine output ------------------------------------------


@pytest.mark.parametrize(
    ("remote", "expected"),
    [(0, 0), (3, 3), (130, 130), (255, 255), (-1, 1), (256, 1)],
)
def test_remote_exit_code_becomes_the_exit_status(remote: int, expected: int) -> None:
    """Codes 0..255 pass through; negative or larger ones exit 1 (never success)."""
    result, _ = run_against([stdout_frame(log_line("working"))], code=remote)

    assert result.returncode == expected, result.stderr


def test_json_output_is_the_received_lines_unchanged() -> None:
    """``--json`` writes every received line to stdout byte for byte, one a line."""
    sent = [
        log_line("Größe 🚀"),
        log_line("no level", level=None),
        b"not json at all, not even UTF-8: \xff\xfe, CRLF ending\r\n",
        log_line("from stderr", "warning"),
        STATUS_LINE.encode() + b"\n",
    ]
    cut = sent[0].index("🚀".encode()) + 1
    messages = [
        stdout_frame(sent[0][:cut]),
        stdout_frame(sent[0][cut:] + sent[1][:4]),
        stdout_frame(sent[1][4:] + sent[2]),
        stderr_frame(sent[3]),
        stdout_frame(sent[4]),
    ]

    result, _ = run_against(messages, "up", "--json", code=3)

    assert result.returncode == 3, result.stderr
    assert result.stdout == b"".join(sent)
    assert result.stderr == b""


def test_up_sends_options_web_mode_and_the_key_in_a_header() -> None:
    """``up`` merges ``--options`` and ``--option``; asks for web mode and debug."""
    result, peer = run_against(
        [],
        "up",
        "--debug",
        "--options",
        '{"id": "demo", "ide": "vscode"}',
        "--option",
        "ide=none",
        "--option",
        "recreate=true",
        "--option",
        "source=git:https://example.com/r.git",
    )

    assert result.returncode == 0, result.stderr
    [handshake] = peer.handshakes
    assert handshake.path.split("?")[0].endswith("/devpodworkspaceinstances/demo/up")
    query = query_of(handshake.path)
    assert json.loads(query.pop("options")) == {
        "id": "demo",
        "ide": "none",
        "recreate": True,
        "source": "git:https://example.com/r.git",
    }
    assert query == {"webMode": "true", "debug": "true"}
    assert handshake.headers["Authorization"] == f"Bearer {ACCESS_KEY}"
    assert ACCESS_KEY not in handshake.path


# --- status -----------------------------------------------------------------


def test_status_prints_the_state_word() -> None:
    """``status`` prints only the state on stdout; log lines go to stderr."""
    status = STATUS_LINE.encode() + b"\n"
    messages = [
        stdout_frame(log_line("reading status") + status[:20]),
        stdout_frame(status[20:]),
    ]

    result, peer = run_against(messages, "status")

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Stopped\n"
    assert lines(result.stderr) == ["info    reading status"]
    path = peer.paths[0]
    assert path.split("?")[0].endswith("/demo/get-status")
    assert json.loads(query_of(path)["options"]) == {"containerStatus": True}
    assert query_of(path)["debug"] == "false"


def test_status_json_prints_the_status_object_as_received() -> None:
    """``status --json`` prints the status line exactly as the server sent it."""
    messages = [stdout_frame(log_line("reading")), stdout_frame(STATUS_LINE.encode())]

    result, _ = run_against(messages, "status", "--json")

    assert result.returncode == 0, result.stderr
    assert result.stdout == STATUS_LINE.encode() + b"\n"


def test_status_falls_back_to_getstatus_when_get_status_is_404() -> None:
    """A 404 for ``get-status`` makes ``status`` try ``getstatus`` next."""
    messages = [stdout_frame(STATUS_LINE.encode() + b"\n")]

    result, peer = run_against(messages, "status", not_found=["get-status"])

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Stopped\n"
    actions = [path.split("?")[0].rpartition("/")[2] for path in peer.paths]
    assert actions == ["get-status", "getstatus"]


def test_status_without_either_action_exits_255() -> None:
    """When both status actions answer 404 the command fails with one message."""
    result, peer = run_against([], "status", not_found=["get-status", "getstatus"])

    assert result.returncode == 255
    assert result.stdout == b""
    assert len(peer.paths) == 2
    [message] = lines(result.stderr)
    assert message.startswith("wsbridge: ") and "404" in message


def test_status_passes_a_failing_exit_code_through() -> None:
    """A status action that fails exits with its code and prints no state."""
    messages = [stderr_frame(b"workspace lookup failed\n")]

    result, _ = run_against(messages, "status", code=4)

    assert result.returncode == 4
    assert result.stdout == b""
    assert lines(result.stderr) == ["workspace lookup failed"]


def test_status_without_a_status_object_exits_255() -> None:
    """A status action that succeeds but prints no status object is an error."""
    result, _ = run_against([stdout_frame(log_line("nothing to say"))], "status")

    assert result.returncode == 255
    assert result.stdout == b""
    assert "no status object" in result.stderr.decode()


# --- Ctrl-C -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
def test_stop_signal_during_up_exits_128_plus_it_and_closes_with_1000(
    signum: signal.Signals, expected: int
) -> None:
    """Ctrl-C (or SIGTERM) during a long ``up`` exits 128+N after a 1000 close."""
    messages = [stdout_frame(log_line("Pulling image"))]
    with FaultyPeer(hold_open(messages)) as peer:
        up = ServerProcess("wsbridge up", cli_argv("up", peer), env=key_env())
        try:
            up.stdout.wait_for(re.compile("Pulling image"), START_TIMEOUT)
            up.popen.send_signal(signum)
            status = up.popen.wait(scaled(EXIT_TIMEOUT))
        finally:
            up.stop()
        assert peer.wait_finished(EXIT_TIMEOUT), "the peer never saw the close"

    assert status == expected, up.output()
    assert peer.outcome.client_close_code == 1000
    assert "Traceback" not in up.stderr.tail()


# --- against the emulator: status, and auto-start through the proxy ---------


def emulator_cli(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``wsbridge ARGS...`` against ``emulator`` with its key file."""
    command, *rest = args
    argv = [sys.executable, "-m", "wsbridge", command, "--server", emulator.url]
    argv += ["--access-key-file", str(emulator.access_key_file), *rest]
    result = run_command(argv, CLI_TIMEOUT)
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result


def state_of(emulator: Emulator, workspace: str = DEFAULT_WORKSPACE) -> str:
    """Return what ``wsbridge status`` prints for ``workspace``."""
    result = emulator_cli(emulator, "status", workspace)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def stop(emulator: Emulator, workspace: str = DEFAULT_WORKSPACE) -> None:
    """Stop ``workspace`` with ``wsbridge stop``, checking that it worked."""
    result = emulator_cli(emulator, "stop", workspace)
    assert result.returncode == 0, result.stderr
    assert re.search(rb"^info +\S", result.stdout, re.MULTILINE), result.stdout


def emulator_proxy(
    emulator: Emulator, *options: str, workspace: str = DEFAULT_WORKSPACE
) -> list[str]:
    """Return the proxy argv for ``workspace`` of ``emulator``."""
    return proxy_argv(
        emulator.url,
        workspace,
        access_key_file=emulator.access_key_file,
        options=options,
    )


def first_stdout_bytes(argv: list[str], count: int) -> tuple[bytes, bytes]:
    """Run the proxy as ssh would; return its first stdout bytes and its stderr."""
    with open_stdin() as stdin:
        proxy = subprocess.Popen(
            argv, stdin=stdin.read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert proxy.stdout is not None
            received = read_at_least(proxy.stdout, count, SSH_TIMEOUT)
        finally:
            proxy.kill()
            _, stderr = proxy.communicate(timeout=scaled(EXIT_TIMEOUT))
    return received, stderr


def test_ssh_through_proxy_starts_a_stopped_workspace(
    emulator_factory: EmulatorFactory, openssh: OpenSSH
) -> None:
    """OpenSSH reaches a stopped workspace; the ``up`` log shows on stderr."""
    emulator = emulator_factory(lifecycle_delay=FAST_LIFECYCLE)
    write_known_hosts(openssh.known_hosts, emulator.host_public_key())
    stop(emulator)

    argv = openssh.ssh(DEFAULT_WORKSPACE, "echo hello", proxy=emulator_proxy(emulator))
    result = run_command(argv, SSH_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\n"
    stderr = result.stderr.decode()
    assert f"workspace {DEFAULT_WORKSPACE} is stopped; starting it" in stderr
    assert re.search(r"^info +\S", stderr, re.MULTILINE), stderr
    assert state_of(emulator) == "Running"


def test_proxy_stdout_begins_with_the_ssh_banner_after_auto_start(
    emulator_factory: EmulatorFactory,
) -> None:
    """Every byte of the start goes to stderr: stdout starts with ``SSH-2.0-``."""
    emulator = emulator_factory(lifecycle_delay=FAST_LIFECYCLE)
    stop(emulator)

    banner, stderr = first_stdout_bytes(
        emulator_proxy(emulator), len(SSH_BANNER_PREFIX)
    )

    assert banner == SSH_BANNER_PREFIX, stderr.decode()
    assert b"starting it" in stderr
    assert b"\x1b" not in stderr


def test_proxy_waits_for_a_busy_workspace_visibly(
    emulator_factory: EmulatorFactory,
) -> None:
    """While an ``up`` creates the workspace, the proxy says it waits, then connects."""
    emulator = emulator_factory(lifecycle_delay=SLOW_LIFECYCLE)
    argv = [sys.executable, "-m", "wsbridge", "up", "--server", emulator.url]
    argv += ["--access-key-file", str(emulator.access_key_file), "created"]
    up = ServerProcess("wsbridge up", argv)
    try:
        # The first log line means the new workspace has gone Busy.
        up.stdout.wait_for(re.compile(r"^info "), START_TIMEOUT)
        proxy = emulator_proxy(emulator, workspace="created")
        banner, stderr = first_stdout_bytes(proxy, len(SSH_BANNER_PREFIX))
        assert up.popen.wait(scaled(CLI_TIMEOUT)) == 0, up.output()
    finally:
        up.stop()

    assert banner == SSH_BANNER_PREFIX, stderr.decode()
    assert re.search(rb"is Busy; checking again in \d+ s", stderr), stderr


def test_proxy_with_no_start_passes_on_the_platform_message(
    emulator_factory: EmulatorFactory,
) -> None:
    """``--no-start`` to a stopped workspace fails with the platform's words."""
    emulator = emulator_factory(lifecycle_delay=FAST_LIFECYCLE)
    stop(emulator)

    result = run_proxy(emulator_proxy(emulator, "--no-start"), timeout=PROXY_TIMEOUT)

    assert result.returncode != 0
    assert result.stdout == b""
    assert b"is not running (state Stopped)" in result.stderr
    assert state_of(emulator) == "Stopped"


def test_proxy_to_a_deleted_workspace_fails_without_creating_it(
    emulator_factory: EmulatorFactory,
) -> None:
    """Auto-start does not bring back a deleted workspace."""
    emulator = emulator_factory(lifecycle_delay=FAST_LIFECYCLE)
    deleted = emulator_cli(emulator, "delete", DEFAULT_WORKSPACE)
    assert deleted.returncode == 0, deleted.stderr

    result = run_proxy(emulator_proxy(emulator), timeout=PROXY_TIMEOUT)

    assert result.returncode == 255, result.stderr
    assert result.stdout == b""
    assert b"Traceback" not in result.stderr
    assert state_of(emulator) == "NotFound"


def test_auto_start_tries_up_once_when_the_workspace_stays_stopped() -> None:
    """A platform whose up succeeds but which still says Stopped gets no loop."""
    status = stdout_frame(b'{"id":"demo","state":"Stopped"}\n')
    behaviour = by_action(
        {
            "ssh": play([stderr_frame(b"workspace demo is not running\n")], 1),
            "get-status": play([status], 0),
            "up": play([stdout_frame(log_line("Starting workspace"))], 0),
        }
    )
    with FaultyPeer(behaviour) as peer:
        result = run_proxy(cli_argv("proxy", peer), env=key_env())

    assert result.returncode == 255
    assert b"still Stopped after a successful up" in result.stderr
    assert b"Traceback" not in result.stderr
    actions = [path.split("?")[0].rsplit("/", 1)[-1] for path in peer.paths]
    assert actions.count("up") == 1

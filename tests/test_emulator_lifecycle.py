"""Tests of the emulator's workspace states: up, stop, delete, status, list.

Every test runs a real emulator on 127.0.0.1 port 0 in the test's event
loop, with a short lifecycle delay, and talks to it with a real websockets
client reading raw frames, or with wsbridge's own client library.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import ClientConnection, connect

from wsbridge.api import list_workspaces
from wsbridge.emulator import EmulatorSettings, run_emulator
from wsbridge.endpoint import AccessKey, Endpoint
from wsbridge.errors import AuthRejected, ConfigError, UsageError, WorkspaceNotFound
from wsbridge.lifecycle import connect_with_autostart, get_status
from wsbridge.protocol import FrameType, Ignored, decode
from wsbridge.render import LogView, OutputMode

from .test_emulator import (
    STEP_TIMEOUT,
    Emulator,
    handshake_status,
    running_emulator,
    ssh_session,
)

# Seconds one lifecycle action takes here: quick, yet paced.
LIFECYCLE_DELAY = 0.2

# A delay long enough that a second client surely arrives mid-action.
OVERLAP_DELAY = 2.0

# A delay no test waits out: only shutting down ends such an action.
ENDLESS_DELAY = 600.0

# PROTOCOL.md's time stamp: RFC 3339, UTC, milliseconds.
TIME_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

LEVELS = {"debug", "info", "warning", "error"}

LIST_PATH = (
    "/kubernetes/management/apis/management.loft.sh/v1"
    "/namespaces/loft-p-default/devpodworkspaceinstances"
)


def settings_for(state_dir: Path, **changes: Any) -> EmulatorSettings:
    """Return settings serving ``demo`` from ``state_dir``, with ``changes``."""
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "port": 0,
        "workspaces": ["demo"],
        "lifecycle_delay": LIFECYCLE_DELAY,
    }
    values.update(changes)
    return EmulatorSettings(**values)


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    """Serve workspace ``demo`` with a short lifecycle delay."""
    async with running_emulator(settings_for(tmp_path / "state")) as running:
        yield running


def endpoint_of(emulator: Emulator, access_key: str | None = None) -> Endpoint:
    """Return the client library's endpoint for ``emulator``."""
    return Endpoint(emulator.url, AccessKey(access_key or emulator.access_key))


def action_query(options: dict[str, Any] | None = None, debug: bool = False) -> str:
    """Return the query the client sends: options as JSON, then the flags."""
    return urlencode(
        {
            "options": json.dumps(options or {}),
            "webMode": "true",
            "debug": "true" if debug else "false",
        }
    )


@dataclass
class Transcript:
    """Every frame one session sent, in order, and its exit code."""

    frames: list[tuple[FrameType, bytes]] = field(default_factory=list)
    exit_code: int | None = None

    def data(self, stream: FrameType) -> bytes:
        """Return everything sent on ``stream``, joined."""
        return b"".join(payload for kind, payload in self.frames if kind is stream)

    def records(self, stream: FrameType) -> list[dict[str, Any]]:
        """Return the JSON log records reassembled from ``stream``."""
        lines = self.data(stream).decode().splitlines()
        return [json.loads(line) for line in lines]

    def messages(self) -> list[str]:
        """Return the messages of the log records on both streams."""
        records = self.records(FrameType.STDOUT) + self.records(FrameType.STDERR)
        return [record["message"] for record in records]


async def read_transcript(websocket: ClientConnection) -> Transcript:
    """Read frames from ``websocket`` up to and including the exit code."""
    transcript = Transcript()
    async for message in websocket:
        frame = decode(message)
        assert not isinstance(frame, Ignored)
        if frame.type is FrameType.EXIT_CODE:
            transcript.exit_code = frame.exit_code
            break
        transcript.frames.append((frame.type, bytes(frame.payload)))
    return transcript


async def run(
    emulator: Emulator, action: str, workspace: str = "demo", query: str = ""
) -> Transcript:
    """Run ``action`` on ``workspace`` to its exit code; return its frames."""
    async with (
        asyncio.timeout(STEP_TIMEOUT),
        connect(
            emulator.action_url(action, workspace=workspace, query=query),
            additional_headers=emulator.headers,
            compression=None,
        ) as websocket,
    ):
        return await read_transcript(websocket)


async def state_of(emulator: Emulator, workspace: str = "demo") -> str:
    """Return the state the client library reads for ``workspace``."""
    async with asyncio.timeout(STEP_TIMEOUT):
        status = await get_status(endpoint_of(emulator), workspace)
    return str(status["state"])


@dataclass
class HttpAnswer:
    """The status, content type and body of a plain HTTP answer."""

    status: int
    content_type: str
    body: bytes


def _http_get(url: str, headers: dict[str, str]) -> HttpAnswer:
    """GET ``url`` with ``headers``; return the answer, errors included."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=STEP_TIMEOUT) as response:
            return HttpAnswer(
                response.status, response.headers["Content-Type"], response.read()
            )
    except urllib.error.HTTPError as error:
        with error:
            return HttpAnswer(error.code, error.headers["Content-Type"], error.read())


async def http_get(
    emulator: Emulator, path: str, headers: dict[str, str]
) -> HttpAnswer:
    """GET ``path`` from the emulator over plain HTTP, off the event loop."""
    url = emulator.url.replace("ws://", "http://", 1) + path
    return await asyncio.to_thread(_http_get, url, headers)


class Collected:
    """A byte sink that keeps what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        return None


class ScriptedInput:
    """A byte source that gives its chunks, then end of file."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def read(self, n: int = -1, /) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


# up.


async def test_up_creates_an_unknown_workspace_and_leaves_it_running(
    emulator: Emulator,
) -> None:
    """``up`` on a name never seen creates it: Running, exit 0."""
    assert await state_of(emulator, "fresh") == "NotFound"

    result = await run(emulator, "up", "fresh", action_query({"id": "fresh"}))

    assert result.exit_code == 0
    assert "Creating workspace fresh" in result.messages()
    assert await state_of(emulator, "fresh") == "Running"


async def test_up_log_lines_cross_frame_boundaries_as_the_platform_does(
    emulator: Emulator,
) -> None:
    """Frames cut lines and a UTF-8 character, and carry several lines at once."""
    await run(emulator, "stop")
    result = await run(emulator, "up", query=action_query(debug=True))

    payloads = [payload for _, payload in result.frames]
    assert any(not payload.endswith(b"\n") for payload in payloads)
    assert any(payload.count(b"\n") >= 2 for payload in payloads)
    assert any(not _is_utf8(payload) for payload in payloads)

    stdout = result.records(FrameType.STDOUT)
    stderr = result.records(FrameType.STDERR)
    for record in stdout + stderr:
        assert set(record) == {"time", "message", "level"}
        assert TIME_STAMP.fullmatch(record["time"])
        assert record["level"] in LEVELS
    assert {record["level"] for record in stdout} == {"debug", "info"}
    assert {record["level"] for record in stderr} == {"warning"}
    assert any("…" in record["message"] for record in stdout)
    assert result.exit_code == 0


def _is_utf8(data: bytes) -> bool:
    """Tell whether ``data`` decodes as UTF-8 on its own."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


async def test_up_without_debug_sends_no_debug_lines(emulator: Emulator) -> None:
    """With ``debug=false`` the log holds info and warning lines only."""
    await run(emulator, "stop")
    result = await run(emulator, "up", query=action_query(debug=False))

    records = result.records(FrameType.STDOUT) + result.records(FrameType.STDERR)
    assert {record["level"] for record in records} == {"info", "warning"}
    assert result.exit_code == 0


async def test_up_spreads_its_log_over_the_lifecycle_delay(emulator: Emulator) -> None:
    """Starting a stopped workspace takes about the configured delay."""
    await run(emulator, "stop")
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run(emulator, "up", query=action_query())
    assert loop.time() - started >= 0.9 * LIFECYCLE_DELAY
    assert result.exit_code == 0


async def test_up_on_a_running_workspace_says_so_and_exits_0(
    emulator: Emulator,
) -> None:
    """``up`` leaves a running workspace alone and reports it."""
    result = await run(emulator, "up", query=action_query())

    assert result.messages() == ["Workspace demo is already running"]
    assert result.exit_code == 0


async def test_up_with_an_invalid_name_logs_an_error_and_exits_1(
    emulator: Emulator,
) -> None:
    """A name DevPod refuses gets an error record and exit code 1."""
    result = await run(emulator, "up", "Not_OK", action_query())

    [record] = result.records(FrameType.STDERR)
    assert record["level"] == "error"
    assert "Not_OK" in record["message"]
    assert result.exit_code == 1
    assert await state_of(emulator, "Not_OK") == "NotFound"


# stop, and ssh to a workspace that is not running.


async def test_stop_stops_a_running_workspace(emulator: Emulator) -> None:
    """``stop`` logs its progress, exits 0 and leaves the workspace Stopped."""
    result = await run(emulator, "stop", query=action_query())

    assert result.messages()[-1] == "Workspace demo is stopped ✓"
    assert result.exit_code == 0
    assert await state_of(emulator) == "Stopped"


async def test_stop_of_a_stopped_workspace_says_so_and_exits_0(
    emulator: Emulator,
) -> None:
    """A second ``stop`` reports the workspace is already stopped."""
    await run(emulator, "stop")
    result = await run(emulator, "stop")

    assert result.messages() == ["Workspace demo is already stopped"]
    assert result.exit_code == 0


async def test_stop_of_a_missing_workspace_logs_an_error_and_exits_1(
    emulator: Emulator,
) -> None:
    """``stop`` on a name that does not exist fails in frames, not with 404."""
    result = await run(emulator, "stop", "ghost")

    [record] = result.records(FrameType.STDERR)
    assert record["level"] == "error"
    assert result.exit_code == 1


async def test_ssh_to_a_stopped_workspace_explains_on_stderr_only(
    emulator: Emulator,
) -> None:
    """While Stopped, ``ssh`` sends one stderr sentence, no stdout, exit 1."""
    await run(emulator, "stop")
    result = await run(emulator, "ssh")

    assert result.data(FrameType.STDERR) == (
        b"workspace demo is not running (state Stopped); "
        b"start it with 'wsbridge up demo'\n"
    )
    assert FrameType.STDOUT not in [kind for kind, _ in result.frames]
    assert result.exit_code == 1


async def test_up_after_stop_lets_ssh_log_in_again(emulator: Emulator) -> None:
    """A stopped workspace started again takes SSH logins as before."""
    await run(emulator, "stop")
    assert (await run(emulator, "up", query=action_query())).exit_code == 0

    async with asyncio.timeout(STEP_TIMEOUT):
        async with ssh_session(emulator) as (connection, _):
            result = await connection.run("echo back")
    assert result.stdout == "back\n"


async def test_client_autostart_starts_a_stopped_workspace(
    emulator: Emulator,
) -> None:
    """wsbridge's ssh with auto-start starts the workspace, then gets SSH."""
    await run(emulator, "stop")
    view = LogView(OutputMode.PLAIN, stdout=io.StringIO(), stderr=io.StringIO())
    stdout, stderr = Collected(), Collected()

    async with asyncio.timeout(STEP_TIMEOUT):
        code = await connect_with_autostart(
            endpoint_of(emulator),
            "demo",
            ScriptedInput(b"SSH-2.0-wsbridge_test\r\n"),
            stdout,
            stderr,
            view=view,
        )

    assert bytes(stdout.data).startswith(b"SSH-2.0-")
    assert code == 0
    assert await state_of(emulator) == "Running"


# delete.


async def test_delete_removes_the_workspace(emulator: Emulator) -> None:
    """``delete`` exits 0; the workspace is NotFound and ssh says so."""
    options = {"ignoreNotFound": False, "force": False, "gracePeriod": "10s"}
    result = await run(emulator, "delete", query=action_query(options))

    assert result.exit_code == 0
    assert await state_of(emulator) == "NotFound"
    ssh = await run(emulator, "ssh")
    assert b"state NotFound" in ssh.data(FrameType.STDERR)
    assert ssh.exit_code == 1


@pytest.mark.parametrize(
    ("ignore_not_found", "level", "exit_code"),
    [(True, "info", 0), (False, "error", 1)],
)
async def test_delete_of_a_missing_workspace_obeys_ignore_not_found(
    emulator: Emulator, ignore_not_found: bool, level: str, exit_code: int
) -> None:
    """A missing workspace: exit 0 with ignoreNotFound, else an error and 1."""
    options = {"ignoreNotFound": ignore_not_found, "force": False}
    result = await run(emulator, "delete", "ghost", action_query(options))

    records = result.records(FrameType.STDOUT) + result.records(FrameType.STDERR)
    assert [record["level"] for record in records] == [level]
    assert result.exit_code == exit_code


# The status actions.


@pytest.mark.parametrize("action", ["get-status", "getstatus"])
@pytest.mark.parametrize(
    ("workspace", "state"), [("demo", "Running"), ("ghost", "NotFound")]
)
async def test_both_status_names_print_the_state_of_any_name(
    emulator: Emulator, action: str, workspace: str, state: str
) -> None:
    """Either status action prints one status line, exit 0, even for NotFound."""
    query = urlencode({"options": '{"containerStatus":true}', "debug": "false"})
    result = await run(emulator, action, workspace, query)

    expected = {
        "id": workspace,
        "context": "default",
        "provider": "emulator",
        "state": state,
    }
    assert result.data(FrameType.STDOUT) == (
        json.dumps(expected, separators=(",", ":")).encode() + b"\n"
    )
    assert result.exit_code == 0


@pytest.mark.parametrize(
    ("served", "refused"), [("get-status", "getstatus"), ("getstatus", "get-status")]
)
async def test_serving_one_status_name_refuses_the_other_with_404(
    tmp_path: Path, served: str, refused: str
) -> None:
    """With one status name served, the other gets 404; the client falls back."""
    settings = settings_for(tmp_path / "state", status_actions=(served,))
    async with running_emulator(settings) as running:
        url = running.action_url(refused)
        assert await handshake_status(url, running.headers) == 404
        assert (await run(running, served)).exit_code == 0
        assert await state_of(running) == "Running"


async def test_unknown_status_action_setting_is_a_usage_error(tmp_path: Path) -> None:
    """Only the two status names PROTOCOL.md knows can be served."""
    settings = settings_for(tmp_path / "state", status_actions=("status",))
    with pytest.raises(UsageError, match="status"):
        await run_emulator(settings, lambda url: None)


# Busy: concurrent actions, clients that leave, shutting down.


async def test_second_up_waits_for_the_first_and_reports_running(
    tmp_path: Path,
) -> None:
    """Two ups at once: the second waits, then finds the workspace running."""
    settings = settings_for(tmp_path / "state", lifecycle_delay=OVERLAP_DELAY)
    async with running_emulator(settings) as running, asyncio.timeout(STEP_TIMEOUT):
        async with connect(
            running.action_url("up", workspace="fresh", query=action_query()),
            additional_headers=running.headers,
        ) as first:
            # The first frame comes once the workspace is Busy.
            first_frame = await first.recv()
            assert await state_of(running, "fresh") == "Busy"
            second = await run(running, "up", "fresh", action_query())
            rest = await read_transcript(first)

        assert first_frame and rest.exit_code == 0
        assert second.messages() == [
            "Workspace fresh is busy with another action; waiting for it to finish",
            "Workspace fresh is already running",
        ]
        assert second.exit_code == 0
        assert await state_of(running, "fresh") == "Running"


async def test_ssh_to_a_busy_workspace_explains_on_stderr_only(
    tmp_path: Path,
) -> None:
    """While an action runs, ``ssh`` says the workspace is Busy, exit 1."""
    settings = settings_for(tmp_path / "state", lifecycle_delay=ENDLESS_DELAY)
    async with (
        running_emulator(settings) as running,
        asyncio.timeout(STEP_TIMEOUT),
        connect(
            running.action_url("stop"), additional_headers=running.headers
        ) as stopping,
    ):
        await stopping.recv()
        result = await run(running, "ssh")

    assert b"(state Busy)" in result.data(FrameType.STDERR)
    assert FrameType.STDOUT not in [kind for kind, _ in result.frames]
    assert result.exit_code == 1


async def test_up_finishes_after_its_client_leaves(emulator: Emulator) -> None:
    """A client that hangs up mid-action does not stop the workspace starting."""
    async with (
        asyncio.timeout(STEP_TIMEOUT),
        connect(
            emulator.action_url("up", workspace="fresh", query=action_query()),
            additional_headers=emulator.headers,
        ) as leaving,
    ):
        await leaving.recv()

    # The next up waits for the first, if need be, and finds its result.
    result = await run(emulator, "up", "fresh", action_query())
    assert result.messages()[-1] == "Workspace fresh is already running"
    assert result.exit_code == 0


# States across restarts.


async def test_states_survive_a_restart(tmp_path: Path) -> None:
    """Stopped, deleted and created workspaces keep their states on restart."""
    state_dir = tmp_path / "state"
    settings = settings_for(state_dir, workspaces=["demo", "other", "gone"])
    async with running_emulator(settings) as running:
        assert (await run(running, "stop", "other")).exit_code == 0
        assert (await run(running, "delete", "gone")).exit_code == 0
        assert (await run(running, "up", "fresh", action_query())).exit_code == 0

    async with running_emulator(settings) as restarted:
        states = {
            name: await state_of(restarted, name)
            for name in ("demo", "other", "gone", "fresh")
        }
    assert states == {
        "demo": "Running",
        "other": "Stopped",
        "gone": "NotFound",
        "fresh": "Running",
    }


async def test_a_workspace_busy_at_shutdown_comes_back_stopped(
    tmp_path: Path,
) -> None:
    """Stopping the emulator mid-action ends the action; the state is Stopped."""
    state_dir = tmp_path / "state"
    slow = settings_for(state_dir, lifecycle_delay=ENDLESS_DELAY)
    async with running_emulator(slow) as running, asyncio.timeout(STEP_TIMEOUT):
        starting = await connect(
            running.action_url("up", workspace="fresh", query=action_query()),
            additional_headers=running.headers,
        )
        await starting.recv()
        assert await state_of(running, "fresh") == "Busy"
    await starting.wait_closed()

    async with running_emulator(settings_for(state_dir)) as restarted:
        assert await state_of(restarted, "fresh") == "Stopped"


async def test_unreadable_workspace_file_is_a_config_error(tmp_path: Path) -> None:
    """A workspaces.json that is not the emulator's fails with advice."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "workspaces.json").write_text('{"version": 1, "workspaces": [')
    with pytest.raises(ConfigError, match=r"workspaces\.json.*delete it"):
        await run_emulator(settings_for(state_dir), lambda url: None)


# The workspace list.


async def test_workspace_list_names_the_workspaces_that_exist(
    tmp_path: Path,
) -> None:
    """A plain GET lists existing workspaces as JSON; deleted ones are gone."""
    settings = settings_for(tmp_path / "state", workspaces=["demo", "other", "gone"])
    async with running_emulator(settings) as running:
        await run(running, "stop", "other")
        await run(running, "delete", "gone")
        answer = await http_get(running, LIST_PATH, running.headers)
        async with asyncio.timeout(STEP_TIMEOUT):
            names = await list_workspaces(endpoint_of(running))

    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert json.loads(answer.body) == {
        "apiVersion": "management.loft.sh/v1",
        "kind": "DevPodWorkspaceInstanceList",
        "items": [
            {"metadata": {"name": "demo"}, "status": {"phase": "Running"}},
            {"metadata": {"name": "other"}, "status": {"phase": "Stopped"}},
        ],
    }
    assert names == ["demo", "other"]


async def test_workspace_list_without_the_access_key_is_refused_with_401(
    emulator: Emulator,
) -> None:
    """The list needs the access key like every other request."""
    answer = await http_get(emulator, LIST_PATH, {})
    assert answer.status == 401

    async with asyncio.timeout(STEP_TIMEOUT):
        with pytest.raises(AuthRejected):
            await list_workspaces(endpoint_of(emulator, "not-the-key"))


async def test_ssh_to_a_workspace_that_never_existed_is_not_found_for_the_client(
    emulator: Emulator,
) -> None:
    """The client library reports a never-created workspace as not found."""
    async with asyncio.timeout(STEP_TIMEOUT):
        with pytest.raises(WorkspaceNotFound):
            await connect_with_autostart(
                endpoint_of(emulator),
                "ghost",
                ScriptedInput(),
                Collected(),
                Collected(),
            )

"""The emulator's websocket server: routes, access key, one session per socket.

It answers the URL layout of PROTOCOL.md for any project id. Every request
needs the access key (401 without it, before anything else). A plain GET of
the project's ``devpodworkspaceinstances`` collection lists the workspaces
that exist, as JSON. The HTTP upgrade is refused with 404 for an unknown
path or action, a status action name the settings do not serve, and
``ssh`` to a workspace that never existed; everything after the upgrade is
frames. Lifecycle actions (``actions.py``) change the workspace's state and
stream JSON log lines; both status actions print the status object, for
any name; ``ssh`` splices the socket to an SSH back end while the workspace
is ``Running`` and otherwise explains on stderr, with exit code 1 and no
stdout, which is what a client's auto-start waits for.

``run_emulator`` serves in the current event loop; ``start_detached`` and
``stop_detached`` run it as a background process tied to a state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import asyncssh
import platformdirs
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..errors import ConfigError, UsageError
from ..files import replace_file
from ..protocol import RECEIVE_LIMIT, FrameType, chunk_frames, encode, encode_exit_code
from .actions import LIFECYCLE_ACTIONS, LifecycleActions
from .ssh_backends import (
    EmbeddedSsh,
    SshBackend,
    SshBackendUnavailable,
    UpstreamSsh,
    splice,
)
from .state import (
    LOG_FILE,
    PID_FILE,
    STATE_DIR_MODE,
    prepare_state,
    write_client_config,
)
from .workspaces import (
    WORKSPACES_FILE,
    Workspaces,
    WorkspaceState,
    status_object,
)

__all__ = [
    "DEFAULT_PORT",
    "LISTENING_PREFIX",
    "EmulatorSettings",
    "Route",
    "default_state_dir",
    "parse_route",
    "run_emulator",
    "start_detached",
    "stop_detached",
]

logger = logging.getLogger("wsbridge.emulator")

# A fixed default, so that a saved server URL keeps working across restarts.
DEFAULT_PORT = 17022
DEFAULT_WORKSPACE = "demo"

# The line the CLI prints first; start_detached reads the URL from it.
LISTENING_PREFIX = "wsbridge emulator listening on "

_COLLECTION = (
    r"/kubernetes/management/apis/management\.loft\.sh/v1"
    r"/namespaces/loft-p-(?P<project>[^/]+)/devpodworkspaceinstances"
)
_ROUTE = re.compile(_COLLECTION + r"/(?P<workspace>[^/]+)/(?P<action>[^/]+)")
_LIST_ROUTE = re.compile(_COLLECTION + "/?")

ACCESS_KEY_COOKIE = "loft_access_key"

# The documented name and the one the open-source DevPod client dials.
DEFAULT_STATUS_ACTIONS = ("get-status", "getstatus")
STATUS_ACTIONS = frozenset(DEFAULT_STATUS_ACTIONS)
SSH_ACTION = "ssh"
ACTIONS = LIFECYCLE_ACTIONS | STATUS_ACTIONS | {SSH_ACTION}

# What the workspace list answers, as the platform's Kubernetes API names it.
LIST_API_VERSION = "management.loft.sh/v1"
LIST_KIND = "DevPodWorkspaceInstanceList"

EXIT_OK = 0
EXIT_NOT_RUNNING = 1
EXIT_BAD_OPTIONS = 2
EXIT_SSH_UNAVAILABLE = 255

# How long a lifecycle action's log takes in all: long enough to watch a
# progress line, short enough not to bore (a real start takes minutes).
DEFAULT_LIFECYCLE_DELAY = 2.5

# The DevPod client's ping interval (PROTOCOL.md, Keepalive).
PING_INTERVAL = 10.0

# How long a session waits for the client to close after the exit code.
CLIENT_CLOSE_GRACE = 5.0

# How long shutting down waits for sessions to wind down.
SHUTDOWN_TIMEOUT = 10.0

# How long to wait for an upstream SSH server's host key at start.
UPSTREAM_KEY_TIMEOUT = 5.0

# How long start_detached waits for the listening line, and stop_detached
# for a child it started itself to exit.
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# How long start_detached waits for a running emulator's port to answer.
PORT_CHECK_TIMEOUT = 1.0


def default_state_dir() -> Path:
    """Return where the emulator keeps its keys and config by default."""
    return platformdirs.user_state_path("wsbridge") / "emulator"


@dataclass
class EmulatorSettings:
    """Everything ``run_emulator`` needs to know; paths may be relative."""

    state_dir: Path
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    access_key_file: Path | None = None
    workspaces: list[str] = field(default_factory=lambda: [DEFAULT_WORKSPACE])
    ssh_upstream: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Seconds the log of one up, stop or delete is spread over.
    lifecycle_delay: float = DEFAULT_LIFECYCLE_DELAY
    # The status action names served; the others answer 404, so that a
    # client's fallback from one name to the other can be tried.
    status_actions: tuple[str, ...] = DEFAULT_STATUS_ACTIONS


@dataclass(frozen=True)
class Route:
    """What a request path asks for: project, workspace, action, query."""

    project: str
    workspace: str
    action: str
    query: dict[str, list[str]]

    def flag(self, name: str) -> bool:
        """Return whether the query sets ``name`` (``?debug=true``, ``?debug``)."""
        values = self.query.get(name)
        if not values:
            return False
        return values[-1].lower() in ("", "1", "true", "yes")

    def options(self) -> dict[str, Any]:
        """Decode the ``options`` query parameter, a JSON object.

        Raises:
            ValueError: it is not JSON, or not an object.
        """
        values = self.query.get("options")
        if not values:
            return {}
        options = json.loads(values[-1])
        if not isinstance(options, dict):
            raise ValueError("options must be a JSON object")
        return options


def parse_route(path: str) -> Route | None:
    """Return the route a request path names, or None if it names none."""
    parts = urllib.parse.urlsplit(path)
    match = _ROUTE.fullmatch(parts.path)
    if match is None or match["action"] not in ACTIONS:
        return None
    return Route(
        project=urllib.parse.unquote(match["project"]),
        workspace=urllib.parse.unquote(match["workspace"]),
        action=match["action"],
        query=urllib.parse.parse_qs(parts.query, keep_blank_values=True),
    )


class _SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefix every line of one session with its number."""

    def __init__(self, session_id: int) -> None:
        super().__init__(logger, {})
        self._prefix = f"[session {session_id}] "

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Put the session prefix in front of ``msg``."""
        return self._prefix + str(msg), kwargs


class _Emulator:
    """The request check and the session handler the websocket server calls."""

    def __init__(
        self,
        access_key: str,
        workspaces: Workspaces,
        backend: SshBackend,
        settings: EmulatorSettings,
    ) -> None:
        self._access_key = access_key.encode()
        self._workspaces = workspaces
        self._backend = backend
        self._status_actions = frozenset(settings.status_actions)
        self._lifecycle = LifecycleActions(workspaces, settings.lifecycle_delay)
        self._session_ids = itertools.count(1)

    def interrupt_actions(self) -> None:
        """End running lifecycle actions at their next pause, leaving them Busy."""
        self._lifecycle.interrupt()

    # The HTTP request: access key, workspace list, routes.

    def check_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Refuse without a valid access key or a known route; answer a list."""
        path = urllib.parse.urlsplit(request.path).path
        if not self._has_access_key(request.headers):
            logger.info("refused %s: no valid access key", path)
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED, "A valid access key is required.\n"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response

        if _LIST_ROUTE.fullmatch(path):
            return self._workspace_list(connection)

        route = parse_route(request.path)
        if route is None:
            logger.info("refused %s: no such endpoint", path)
            return connection.respond(HTTPStatus.NOT_FOUND, "No such endpoint.\n")
        if route.action in STATUS_ACTIONS and route.action not in self._status_actions:
            logger.info("refused %s: %s is not served", path, route.action)
            return connection.respond(HTTPStatus.NOT_FOUND, "No such endpoint.\n")
        # Only ssh needs the workspace to exist: up creates it, and the other
        # actions answer a missing one in frames, as the platform does.
        if route.action == SSH_ACTION and self._workspaces.get(route.workspace) is None:
            logger.info("refused %s: no workspace %r", path, route.workspace)
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"Workspace {route.workspace} not found.\n"
            )
        return None

    def _workspace_list(self, connection: ServerConnection) -> Response:
        """Answer the workspace list: every workspace that exists, as JSON."""
        document = {
            "apiVersion": LIST_API_VERSION,
            "kind": LIST_KIND,
            "items": [
                {
                    "metadata": {"name": workspace.name},
                    "status": {"phase": workspace.state.value},
                }
                for workspace in self._workspaces.existing()
            ],
        }
        response = connection.respond(HTTPStatus.OK, json.dumps(document) + "\n")
        # Headers.__setitem__ adds a value; the old type must go first.
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        logger.info("listed %d workspaces", len(document["items"]))
        return response

    def _has_access_key(self, headers: Headers) -> bool:
        """Return whether the bearer token or the cookie holds the access key."""
        for value in headers.get_all("Authorization"):
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer" and self._is_access_key(credentials):
                return True
        for value in headers.get_all("Cookie"):
            for pair in value.split(";"):
                name, _, credentials = pair.strip().partition("=")
                if name == ACCESS_KEY_COOKIE and self._is_access_key(credentials):
                    return True
        return False

    def _is_access_key(self, candidate: str) -> bool:
        """Compare ``candidate`` with the access key in constant time."""
        presented = candidate.strip().strip('"').encode("utf-8", "replace")
        return hmac.compare_digest(presented, self._access_key)

    # One session.

    async def serve_session(self, websocket: ServerConnection) -> None:
        """Run the action the URL names, then end with its exit code."""
        assert websocket.request is not None
        route = parse_route(websocket.request.path)
        # check_request lets only known routes through.
        assert route is not None

        log = _SessionLog(next(self._session_ids))
        log.info(
            "opened: %s on workspace %s (project %r)",
            route.action,
            route.workspace,
            route.project,
        )
        exit_code: int | None = None
        try:
            exit_code = await self._run_action(websocket, route, log)
            if exit_code is not None:
                await websocket.send(encode(FrameType.STDOUT_CLOSE))
                await websocket.send(encode(FrameType.STDERR_CLOSE))
                await websocket.send(encode_exit_code(exit_code))
                await _wait_for_client_close(websocket, log)
        except ConnectionClosed:
            pass
        finally:
            outcome = (
                "the client went away first"
                if exit_code is None
                else f"exit code {exit_code}"
            )
            log.info(
                "closed: %s on workspace %s, %s", route.action, route.workspace, outcome
            )

    async def _run_action(
        self, websocket: ServerConnection, route: Route, log: _SessionLog
    ) -> int | None:
        """Run one action; return its exit code, None if the client left."""
        try:
            options = route.options()
        except ValueError as exc:
            await _send_text(websocket, FrameType.STDERR, f"invalid options: {exc}\n")
            return EXIT_BAD_OPTIONS

        if route.action in STATUS_ACTIONS:
            state = self._workspaces.state_of(route.workspace)
            status = status_object(route.workspace, state)
            line = json.dumps(status, separators=(",", ":"))
            await _send_text(websocket, FrameType.STDOUT, line + "\n")
            return EXIT_OK
        if route.action == SSH_ACTION:
            return await self._run_ssh(websocket, route.workspace, log)

        sender = _LenientSender(websocket, log)
        return await self._lifecycle.run(
            route.action, route.workspace, options, route.flag("debug"), sender.send
        )

    async def _run_ssh(
        self, websocket: ServerConnection, name: str, log: _SessionLog
    ) -> int | None:
        """Splice the session to the SSH back end; 0 once the SSH side ends.

        A workspace that is not running gets a sentence on stderr and exit
        code 1, without a byte on stdout.
        """
        state = self._workspaces.state_of(name)
        if state is not WorkspaceState.RUNNING:
            log.info("workspace %s is %s; no ssh", name, state.value)
            await _send_text(websocket, FrameType.STDERR, _not_running(name, state))
            return EXIT_NOT_RUNNING

        try:
            async with self._backend.connect() as stream:
                ssh_finished = await splice(websocket, stream, log)
        except SshBackendUnavailable as exc:
            log.warning("%s", exc)
            await _send_text(websocket, FrameType.STDERR, f"{exc}\n")
            return EXIT_SSH_UNAVAILABLE
        return EXIT_OK if ssh_finished else None


class _LenientSender:
    """Send frames to a client, dropping them once the client has gone.

    A lifecycle action runs to its end, as on the platform, even when the
    client that asked for it leaves halfway.
    """

    def __init__(self, websocket: ServerConnection, log: _SessionLog) -> None:
        self._websocket = websocket
        self._log = log
        self._gone = False

    async def send(self, message: bytes) -> None:
        """Send ``message`` unless the client is gone."""
        if self._gone:
            return
        try:
            await self._websocket.send(message)
        except ConnectionClosed:
            self._log.info("the client left; the action goes on without it")
            self._gone = True


def _not_running(name: str, state: WorkspaceState) -> str:
    """Say, for a person, why ssh cannot reach ``name`` and what to do."""
    if state is WorkspaceState.BUSY:
        advice = "another action on it is under way; try again when it is done"
    elif state is WorkspaceState.NOT_FOUND:
        advice = f"it was deleted; create it again with 'wsbridge up {name}'"
    else:
        advice = f"start it with 'wsbridge up {name}'"
    return f"workspace {name} is not running (state {state.value}); {advice}\n"


async def _send_text(
    websocket: ServerConnection, frame_type: FrameType, text: str
) -> None:
    """Send ``text`` as UTF-8 in as many frames as it needs."""
    for message in chunk_frames(frame_type, text.encode()):
        await websocket.send(message)


async def _wait_for_client_close(websocket: ServerConnection, log: _SessionLog) -> None:
    """Let the client close first, as the protocol asks, but not forever."""
    try:
        async with asyncio.timeout(CLIENT_CLOSE_GRACE):
            async for _ in websocket:
                log.debug("ignoring a message after the exit code")
    except TimeoutError:
        log.debug("the client did not close after the exit code; closing")


# Serving.


async def run_emulator(
    settings: EmulatorSettings, on_ready: Callable[[str], None]
) -> None:
    """Serve until cancelled or sent SIGTERM, calling ``on_ready(url)`` once.

    Prepares the state directory, loads the saved workspace states, listens,
    writes ``ssh_config`` and ``known_hosts`` for the URL, then calls
    ``on_ready``. SIGTERM (in the main thread) ends it normally; cancellation
    ends it with CancelledError. Either way, lifecycle actions still running
    stop where they are, and live sessions are closed with 1001 (going away).

    Raises:
        UsageError: the settings ask for something impossible, such as a
            port in use or an invalid workspace name.
        ConfigError: a state, key, workspace or TLS file cannot be read or
            written.
    """
    _check_settings(settings)
    tls = _server_tls(settings)
    state = prepare_state(settings.state_dir, settings.access_key_file)
    workspaces = Workspaces.load(state.directory / WORKSPACES_FILE, settings.workspaces)
    backend: SshBackend
    if settings.ssh_upstream is None:
        backend = EmbeddedSsh(state.host_key, state.authorized_keys_file)
    else:
        backend = UpstreamSsh(*settings.ssh_upstream)
    emulator = _Emulator(state.access_key, workspaces, backend, settings)

    try:
        server = await serve(
            emulator.serve_session,
            settings.bind,
            settings.port,
            process_request=emulator.check_request,
            compression=None,
            ping_interval=PING_INTERVAL,
            max_size=RECEIVE_LIMIT,
            ssl=tls,
        )
    except OSError as exc:
        raise UsageError(_listen_error(settings, exc)) from exc

    try:
        url = _server_url(server, settings.bind, secure=tls is not None)
        host_key = (
            state.host_key
            if settings.ssh_upstream is None
            else await _upstream_host_key(*settings.ssh_upstream)
        )
        write_client_config(state, url, host_key)
        if not _is_loopback_bind(settings.bind):
            logger.warning(
                "listening on %s: other machines can reach the emulator, and "
                "anyone with the access key can run commands as this user",
                settings.bind,
            )
        logger.info(
            "serving workspaces %s at %s; ssh reaches %s",
            ", ".join(workspace.name for workspace in workspaces.existing())
            or "none yet",
            url,
            backend.describe(),
        )
        stop = asyncio.Event()
        with _stop_on_sigterm(stop):
            on_ready(url)
            await stop.wait()
        logger.info("SIGTERM received; shutting down")
    finally:
        emulator.interrupt_actions()
        await _shut_down(server, backend)


def _check_settings(settings: EmulatorSettings) -> None:
    """Refuse settings that cannot work, before anything is created.

    Raises:
        UsageError: a setting is out of range or names an unknown action.
    """
    if not 0 <= settings.port <= 65535:
        raise UsageError(f"port {settings.port} is out of range (0 to 65535)")
    if not 0 <= settings.lifecycle_delay < math.inf:
        raise UsageError(
            "the lifecycle delay must be a finite number of seconds, 0 or "
            f"more, not {settings.lifecycle_delay}"
        )
    unknown = set(settings.status_actions) - STATUS_ACTIONS
    if unknown:
        raise UsageError(
            f"unknown status action {', '.join(sorted(unknown))}: choose from "
            f"{', '.join(DEFAULT_STATUS_ACTIONS)}"
        )


def _server_tls(settings: EmulatorSettings) -> ssl.SSLContext | None:
    """Load the TLS certificate and key, if the settings name them."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise UsageError("TLS needs both a certificate file and a key file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {settings.tls_cert} with key "
            f"{settings.tls_key}: {exc.strerror or exc}"
        ) from exc
    return context


def _listen_error(settings: EmulatorSettings, exc: OSError) -> str:
    """Say why listening failed in words a person can act on."""
    where = f"{settings.bind}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use; stop what uses it "
            "or choose another port (0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied; use a port above 1023"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _server_url(server: Server, bind: str, *, secure: bool) -> str:
    """Return the URL a client on this machine reaches the server at."""
    port = server.sockets[0].getsockname()[1]
    host = bind
    # A wildcard address is not something to connect to; loopback is.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if secure else 'ws'}://{host}:{port}"


def _is_loopback_bind(bind: str) -> bool:
    """Return whether ``bind`` keeps the server reachable from this host only."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


async def _upstream_host_key(host: str, port: int) -> asyncssh.SSHKey | None:
    """Fetch the upstream SSH server's host key for known_hosts, if it answers."""
    try:
        async with asyncio.timeout(UPSTREAM_KEY_TIMEOUT):
            return await asyncssh.get_server_host_key(host, port, config=None)
    except (OSError, asyncssh.Error) as exc:
        logger.warning(
            "cannot fetch the host key of %s:%d (%s); known_hosts stays empty",
            host,
            port,
            exc,
        )
        return None


@contextlib.contextmanager
def _stop_on_sigterm(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM while the context is open, where possible."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except (ValueError, RuntimeError, NotImplementedError):
        # Signals reach only the main thread; elsewhere the caller cancels.
        installed = False
    else:
        installed = True
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)


async def _shut_down(server: Server, backend: SshBackend) -> None:
    """Close the sessions, wait for them a little, then stop the back end."""
    server.close()
    try:
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            await server.wait_closed()
    except TimeoutError:
        logger.warning("sessions did not end within %.0f s", SHUTDOWN_TIMEOUT)
    await backend.aclose()
    logger.info("emulator stopped")


# Running in the background.

# Children this process started, so that stop_detached can reap them.
_detached_children: dict[int, subprocess.Popen[bytes]] = {}


def start_detached(settings: EmulatorSettings, executable_argv: list[str]) -> str:
    """Start the emulator in the background unless it runs; return its URL.

    ``executable_argv`` runs the emulator in the foreground (for example
    ``wsbridge emulator --state-dir ...``) and must print the listening line
    first. Its log goes to ``emulator.log`` in the state directory.

    Raises:
        ConfigError: the state directory cannot be used.
        UsageError: the emulator exited or stayed silent instead of listening;
            the message carries the last line of its log.
    """
    state_dir = settings.state_dir.expanduser().absolute()
    running = _running_emulator(state_dir)
    if running is not None:
        return running[1]

    log_path = state_dir / LOG_FILE
    try:
        state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot use the state directory {state_dir}: {exc}") from exc
    log_start = os.lseek(log_fd, 0, os.SEEK_END)
    try:
        child = subprocess.Popen(
            executable_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
        )
    except OSError as exc:
        raise UsageError(f"cannot run {executable_argv[0]}: {exc.strerror}") from exc
    finally:
        os.close(log_fd)
    _detached_children[child.pid] = child

    assert child.stdout is not None
    with child.stdout:
        line = _read_first_line(child.stdout, STARTUP_TIMEOUT)
    if line is None or not line.startswith(LISTENING_PREFIX):
        _stop_child(child)
        reason = _last_log_line(log_path, log_start) or "it printed no error"
        # The child's own error line already carries the program's prefix.
        reason = reason.removeprefix("wsbridge: ")
        raise UsageError(f"the emulator did not start: {reason} (log: {log_path})")

    url = line.removeprefix(LISTENING_PREFIX)
    replace_file(state_dir / PID_FILE, f"{child.pid}\n{url}\n")
    return url


def stop_detached(state_dir: Path) -> bool:
    """Send SIGTERM to the background emulator; False if none was running."""
    state_dir = state_dir.expanduser().absolute()
    running = _running_emulator(state_dir)
    (state_dir / PID_FILE).unlink(missing_ok=True)
    if running is None:
        return False
    pid = running[0]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    child = _detached_children.pop(pid, None)
    if child is not None:
        _stop_child(child)
    return True


def _running_emulator(state_dir: Path) -> tuple[int, str] | None:
    """Return the pid and URL of the emulator the pid file names, if it runs."""
    try:
        pid_text, url = (state_dir / PID_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    # A live pid may belong to another program by now; the port tells.
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.port is None:
        return None
    try:
        with socket.create_connection(
            (parts.hostname, parts.port), timeout=PORT_CHECK_TIMEOUT
        ):
            return pid, url
    except OSError:
        return None


def _read_first_line(pipe: IO[bytes], timeout: float) -> str | None:
    """Read one line from ``pipe`` within ``timeout``; None on EOF or timeout."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
            return None
        chunk = os.read(pipe.fileno(), 4096)
        if not chunk:
            return None
        received += chunk
    return received.split(b"\n", 1)[0].decode(errors="replace").strip()


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """Make sure a child this process started has exited, and reap it."""
    _detached_children.pop(child.pid, None)
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _last_log_line(log_path: Path, offset: int) -> str | None:
    """Return the last non-empty line written to the log after ``offset``."""
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None

"""The ``wsbridge`` command line.

This module parses arguments, builds the library objects and maps their
exceptions to exit codes and one-line messages. It holds no logic of its
own; every command is a library call.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .endpoint import AuthMode
from .errors import EXIT_INTERRUPTED, ConfigError, UsageError, WsbridgeError
from .lifecycle import build_options, print_status, run_action
from .paths import EMULATOR_PORT, emulator_state_dir
from .profiles import DEFAULT_PROFILE, ProfileStore
from .render import LogView, OutputMode
from .settings import (
    ENV_ACCESS_KEY,
    ENV_PROFILE,
    ENV_PROJECT,
    ENV_SERVER,
    ConnectionSettings,
)

__all__ = ["exit_status", "main"]

# Remote exit codes outside what a process can return (negative ones, as
# the platform sends for a command killed without a status, or above 255)
# become this, so that a failure never reads as success.
EXIT_UNREPRESENTABLE = 1

# Signals that end a running command cleanly, closing its websocket.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_EPILOG = f"""\
environment (flags override it; it overrides the saved profile):
  {ENV_PROFILE}     saved login to use
  {ENV_SERVER}      server URL
  {ENV_PROJECT}     project id
  {ENV_ACCESS_KEY}  the access key itself

exit status: the remote exit code; 255 for connection, authentication and
protocol failures; 2 for usage errors; 130 after Ctrl-C.
"""


def exit_status(remote_code: int) -> int:
    """Map a remote exit code to one this process can exit with."""
    if 0 <= remote_code <= 255:
        return remote_code
    return EXIT_UNREPRESENTABLE


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _connection_options() -> _Parser:
    """Build the addressing and authentication options shared by commands."""
    parent = _Parser(add_help=False, parents=[_profile_option()])
    group = parent.add_argument_group("server and authentication")
    group.add_argument(
        "--server",
        metavar="URL",
        help=f"platform address: host[:port], https://, wss://, http:// or ws:// "
        f"(env {ENV_SERVER}; default: the local emulator)",
    )
    group.add_argument(
        "--project",
        metavar="ID",
        help=f"project id, used as namespace loft-p-ID (env {ENV_PROJECT}; "
        "default: default)",
    )
    group.add_argument(
        "--access-key-file",
        metavar="FILE",
        type=Path,
        help=f"read the access key from FILE (else env {ENV_ACCESS_KEY})",
    )
    group.add_argument(
        "--auth",
        choices=[mode.value for mode in AuthMode],
        help="send the key as 'Authorization: Bearer' (header, default) or as "
        "the loft_access_key cookie",
    )
    group.add_argument(
        "--ca-file", metavar="FILE", type=Path, help="also trust this CA bundle"
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's TLS certificate (prints a warning)",
    )
    _add_verbosity(parent)
    return parent


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add -v (connection story) and -vv (frames) to ``parser``."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log the connection to stderr; twice for every frame",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every command."""
    parser = _Parser(
        prog="wsbridge",
        description="Reach DevPod.Pro workspaces through their command "
        "websockets.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    connection = _connection_options()

    proxy = commands.add_parser(
        "proxy",
        parents=[connection],
        help="connect stdin/stdout to a workspace's SSH (for ProxyCommand)",
        description="Connect stdin and stdout to the workspace's SSH server, "
        "for OpenSSH's ProxyCommand: ProxyCommand wsbridge proxy %%n",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    proxy.add_argument(
        "--no-start",
        dest="start",
        action="store_false",
        help="do not start a stopped workspace (by default it is started, "
        "with its log on stderr)",
    )
    proxy.add_argument(
        "--host-suffix",
        metavar="SUFFIX",
        help="strip .SUFFIX from WORKSPACE (for ProxyCommand ... %%n with "
        "Host *.SUFFIX)",
    )
    proxy.add_argument("workspace", metavar="WORKSPACE")
    proxy.set_defaults(handler=_proxy)

    listen = commands.add_parser(
        "listen",
        parents=[connection],
        help="serve a workspace's SSH on a local TCP port",
        description="Listen on a local TCP port; every connection gets its own "
        "websocket to the workspace's SSH server: ssh -p PORT 127.0.0.1",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default 127.0.0.1; loopback only unless "
        "--allow-remote)",
    )
    listen.add_argument(
        "--port", type=int, default=0, help="port to listen on (default 0: a free one)"
    )
    listen.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --bind that other machines can reach: they reach the "
        "workspace's SSH with your access key",
    )
    listen.add_argument(
        "--no-start",
        dest="start",
        action="store_false",
        help="do not start a stopped workspace (by default the first connection "
        "starts it, with its log on stderr)",
    )
    listen.add_argument("workspace", metavar="WORKSPACE")
    listen.set_defaults(handler=_listen)

    for name, summary in _REMOTE.items():
        remote = commands.add_parser(
            name,
            parents=[connection],
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}, with wsbridge's own "
            "SSH client. Keys: -i files, then the ssh agent, then ~/.ssh/id_*.",
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        remote.add_argument(
            "-l", "--login", metavar="USER", help="remote user (default: yours)"
        )
        remote.add_argument(
            "-i",
            "--identity",
            metavar="KEYFILE",
            type=Path,
            action="append",
            default=[],
            help="private key to try first (repeatable)",
        )
        remote.add_argument(
            "--strict",
            action="store_true",
            help="refuse a host key not seen before (default: record it)",
        )
        remote.add_argument(
            "--no-start", dest="start", action="store_false",
            help="do not start a stopped workspace",
        )
        remote.add_argument("workspace", metavar="WORKSPACE")
        remote.add_argument(
            "command",
            nargs=argparse.REMAINDER,
            metavar="-- COMMAND",
            help="the command to run"
            + (" (default: a login shell)" if name == "shell" else ""),
        )
        remote.set_defaults(handler=_remote, handler_name=name)

    for action, summary in _LIFECYCLE.items():
        command = commands.add_parser(
            action,
            parents=[connection],
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}.",
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument(
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="set one key of the options object; VALUE is JSON if it "
            "parses, else a string (repeatable)",
        )
        command.add_argument(
            "--options", metavar="JSON", help="the whole options object as JSON"
        )
        command.add_argument(
            "--debug", action="store_true", help="ask the platform for debug logs"
        )
        command.add_argument(
            "--json",
            action="store_true",
            help="print the status object as received"
            if action == "status"
            else "print the received log lines unchanged, one per line",
        )
        command.add_argument("workspace", metavar="WORKSPACE")
        command.set_defaults(handler=_lifecycle, action=action)

    login = commands.add_parser(
        "login",
        parents=[connection],
        help="check an access key and save it as a profile",
        description="Check an access key against --server and save server, "
        "project, auth mode and key as a profile. The key comes from "
        "--access-key-file (- for stdin), or WSBRIDGE_ACCESS_KEY, or a hidden "
        "prompt on a terminal.",
    )
    login.set_defaults(handler=_login)
    logout = commands.add_parser(
        "logout", help="forget a saved profile", parents=[_profile_option()]
    )
    _add_verbosity(logout)
    logout.set_defaults(handler=_logout)

    config_ssh = commands.add_parser(
        "config-ssh",
        parents=[connection],
        help="make every workspace reachable as WORKSPACE.SUFFIX in ssh",
        description="Write a block, between marker lines that wsbridge owns, "
        "into your ssh config so that ssh, scp, rsync and editors reach "
        "WORKSPACE.SUFFIX through wsbridge proxy.",
    )
    _add_ssh_config_options(config_ssh)
    config_ssh.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add this ssh option to the block (repeatable)",
    )
    config_ssh.add_argument(
        "--user", metavar="USER", help="User for the entries (default: yours)"
    )
    config_ssh.add_argument(
        "--no-wildcard",
        dest="wildcard",
        action="store_false",
        help="one entry per workspace listed by the server, instead of "
        "Host *.SUFFIX (editors list explicit hosts)",
    )
    config_ssh.add_argument(
        "--dry-run", action="store_true", help="print the change, write nothing"
    )
    config_ssh.add_argument(
        "--remove", action="store_true", help="take the block out again"
    )
    config_ssh.set_defaults(handler=_config_ssh)

    doctor = commands.add_parser(
        "doctor",
        parents=[connection],
        help="check the set-up: ssh client, ssh config, profile, server, TLS",
    )
    _add_ssh_config_options(doctor)
    doctor.set_defaults(handler=_doctor)

    _add_emulator_parser(commands)
    return parser


def _add_ssh_config_options(parser: argparse.ArgumentParser) -> None:
    """Add --ssh-config and --host-suffix."""
    parser.add_argument(
        "--ssh-config",
        type=Path,
        default=Path("~/.ssh/config").expanduser(),
        metavar="PATH",
        help="the ssh config file (default: ~/.ssh/config)",
    )
    parser.add_argument(
        "--host-suffix",
        default="devpod",
        metavar="SUFFIX",
        help="workspaces are reached as WORKSPACE.SUFFIX (default: devpod)",
    )


def _profile_option() -> _Parser:
    """Build the --profile option."""
    parent = _Parser(add_help=False)
    parent.add_argument(
        "--profile",
        metavar="NAME",
        help=f"saved login to use (env {ENV_PROFILE}; default: {DEFAULT_PROFILE})",
    )
    return parent


_REMOTE = {
    "shell": "open an interactive shell (or run a command) in a workspace",
    "exec": "run one command in a workspace, without a terminal",
}

_LIFECYCLE = {
    "up": "start (or create) a workspace, streaming its log",
    "stop": "stop a workspace",
    "status": "print a workspace's state: Running, Busy, Stopped or NotFound",
    "delete": "delete a workspace",
}


def _add_emulator_parser(commands: Any) -> None:
    """Add the ``emulator`` command and its options."""
    emulator = commands.add_parser(
        "emulator",
        help="run a local stand-in for the platform",
        description="Serve the platform's workspace websockets locally, backed "
        "by an embedded SSH server or an existing one (--ssh-upstream).",
    )
    emulator.add_argument(
        "--port",
        type=int,
        default=EMULATOR_PORT,
        help=f"port to listen on; 0 picks a free one (default {EMULATOR_PORT})",
    )
    emulator.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default "
        "127.0.0.1)"
    )
    emulator.add_argument(
        "--state-dir",
        type=Path,
        help="keys, workspaces and ssh_config live here (default: the user "
        "state directory)",
    )
    emulator.add_argument(
        "--access-key-file",
        type=Path,
        help="the key clients must present; created (mode 0600, random) if "
        "missing (default: STATE_DIR/access_key)",
    )
    emulator.add_argument(
        "--workspace",
        dest="workspaces",
        action="append",
        metavar="NAME",
        help="a workspace to serve, created Running on first start (afterwards "
        "its saved state wins); repeatable (default: demo)",
    )
    emulator.add_argument(
        "--ssh-upstream",
        metavar="HOST:PORT",
        help="splice the ssh action to this SSH server instead of the "
        "embedded one",
    )
    emulator.add_argument(
        "--lifecycle-delay",
        type=float,
        metavar="SECONDS",
        help="how long up and stop take, streaming their log (default 2.5)",
    )
    emulator.add_argument(
        "--status-action",
        dest="status_actions",
        action="append",
        metavar="NAME",
        help="serve only this status action name, get-status or getstatus "
        "(repeatable; default: both)",
    )
    emulator.add_argument("--tls-cert", type=Path, help="serve wss:// with this "
                          "certificate chain (PEM)")
    emulator.add_argument("--tls-key", type=Path, help="private key of --tls-cert")
    mode = emulator.add_mutually_exclusive_group()
    mode.add_argument(
        "--detach",
        action="store_true",
        help="start in the background and return once it listens",
    )
    mode.add_argument(
        "--stop", action="store_true", help="stop a background emulator"
    )
    _add_verbosity(emulator)
    emulator.set_defaults(handler=_emulator)


# Command handlers: each turns parsed arguments into one library call.


def _settings(args: argparse.Namespace) -> ConnectionSettings:
    """Collect the connection options of ``args``."""
    return ConnectionSettings(
        server=args.server,
        project=args.project,
        access_key_file=args.access_key_file,
        auth=AuthMode(args.auth) if args.auth else None,
        ca_file=args.ca_file,
        insecure=args.insecure,
        profile=args.profile,
    )


def _login(args: argparse.Namespace) -> int:
    """Run ``wsbridge login``."""
    from .login import login, read_key_for_login

    key = read_key_for_login(args.access_key_file)
    name = args.profile or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    print(_run_value(login(_settings(args), name, key)))
    return 0


def _logout(args: argparse.Namespace) -> int:
    """Run ``wsbridge logout``."""
    name = args.profile or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    store = ProfileStore()
    if not store.remove(name):
        raise ConfigError(f"no saved profile named {name!r}")
    print(f"removed profile {name!r} from {store.path}")
    return 0


def _proxy(args: argparse.Namespace) -> int:
    """Run ``wsbridge proxy``."""
    from .bridges.stdio import run_proxy

    endpoint = _settings(args).resolve()
    # Everything but the SSH stream goes to stderr, auto-start log included.
    view = (
        LogView(
            OutputMode.for_stream(sys.stderr),
            verbose=args.verbose > 0,
            stdout=sys.stderr,
        )
        if args.start
        else None
    )
    workspace = args.workspace
    if args.host_suffix:
        workspace = workspace.removesuffix(f".{args.host_suffix}")
    return exit_status(_run(run_proxy(endpoint, workspace, view=view)))


def _remote(args: argparse.Namespace) -> int:
    """Run ``wsbridge shell`` or ``wsbridge exec``."""
    from .bridges.ssh import run_command

    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    # Joined with spaces, as ssh joins its command words.
    command = " ".join(words) or None
    if args.handler_name == "exec" and command is None:
        raise UsageError("exec needs a command: wsbridge exec WORKSPACE -- COMMAND")
    endpoint = _settings(args).resolve()
    view = (
        LogView(OutputMode.for_stream(sys.stderr), stdout=sys.stderr)
        if args.start
        else None
    )
    pty = args.handler_name == "shell" and sys.stdin.isatty()
    return exit_status(
        _run(
            run_command(
                endpoint,
                args.workspace,
                command,
                pty=pty,
                username=args.login,
                identity_files=args.identity,
                strict=args.strict,
                view=view,
            )
        )
    )


def _listen(args: argparse.Namespace) -> int:
    """Run ``wsbridge listen``."""
    from .bridges.tcp import format_address, serve_tcp

    endpoint = _settings(args).resolve()

    def announce(host: str, port: int) -> None:
        where = format_address(host, port)
        print(f"wsbridge listening on {where} (workspace {args.workspace})", flush=True)

    return _run(
        serve_tcp(
            endpoint,
            args.workspace,
            bind=args.bind,
            port=args.port,
            allow_remote=args.allow_remote,
            autostart=args.start,
            verbose=args.verbose > 0,
            on_ready=announce,
        )
    )


def _config_ssh(args: argparse.Namespace) -> int:
    """Run ``wsbridge config-ssh``."""
    from .sshconfig import configure

    extra: list[tuple[str, str]] = []
    for pair in args.ssh_option:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--ssh-option expects KEY=VALUE, got {pair!r}")
        extra.append((key, value))

    async def run() -> int:
        messages = await configure(
            _settings(args),
            args.ssh_config,
            host_suffix=args.host_suffix,
            extra_options=extra,
            wildcard=args.wildcard,
            user=args.user,
            dry_run=args.dry_run,
            remove=args.remove,
        )
        print("\n".join(messages))
        return 0

    return _run(run())


def _doctor(args: argparse.Namespace) -> int:
    """Run ``wsbridge doctor``."""
    from .doctor import Verdict, run_checks

    async def run() -> int:
        checks = await run_checks(_settings(args), args.ssh_config, args.host_suffix)
        for check in checks:
            print(check, flush=True)
        failed = any(check.verdict is Verdict.FAIL for check in checks)
        return 1 if failed else 0

    return _run(run())


def _lifecycle(args: argparse.Namespace) -> int:
    """Run ``wsbridge up|stop|status|delete``."""
    endpoint = _settings(args).resolve()
    options = build_options(args.option, args.options)
    if args.action == "status":
        view = LogView(OutputMode.for_stream(sys.stderr), verbose=args.verbose > 0)
        return exit_status(
            _run(
                print_status(
                    endpoint,
                    args.workspace,
                    view,
                    sys.stdout,
                    json_output=args.json,
                    options=options or None,
                    debug=args.debug,
                )
            )
        )
    mode = OutputMode.for_stream(sys.stdout, json_output=args.json)
    # The title is the progress line's step until the log names one.
    view = LogView(
        mode, verbose=args.verbose > 0, title=f"{args.action} {args.workspace}"
    )

    async def run() -> int:
        async with view.running():
            return await run_action(
                endpoint,
                args.workspace,
                args.action,
                stdout=view.sink(view.stdout),
                stderr=view.sink(view.stderr),
                options=options or None,
                debug=args.debug,
            )

    return exit_status(_run(run()))


def _emulator(args: argparse.Namespace) -> int:
    """Run ``wsbridge emulator``."""
    from . import emulator

    settings = emulator.EmulatorSettings(
        state_dir=args.state_dir or emulator_state_dir(),
        bind=args.bind,
        port=args.port,
        access_key_file=args.access_key_file,
        workspaces=args.workspaces or ["demo"],
        ssh_upstream=_host_port(args.ssh_upstream) if args.ssh_upstream else None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    if args.lifecycle_delay is not None:
        settings.lifecycle_delay = args.lifecycle_delay
    if args.status_actions:
        settings.status_actions = tuple(args.status_actions)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.stop:
        stopped = emulator.stop_detached(settings.state_dir)
        print("emulator stopped" if stopped else "no emulator was running")
        return 0
    if args.detach:
        argv = [sys.executable, "-m", "wsbridge", *_without(sys.argv[1:], "--detach")]
        url = emulator.start_detached(settings, argv)
        print(f"wsbridge emulator listening on {url}")
        print(f"try: ssh -F {settings.state_dir / 'ssh_config'} demo 'echo hello'")
        return 0

    def announce(url: str) -> None:
        print(f"wsbridge emulator listening on {url}", flush=True)

    _run(emulator.run_emulator(settings, announce))
    return 0


def _host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 hosts in brackets)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _without(argv: Sequence[str], flag: str) -> list[str]:
    """Return ``argv`` without ``flag``."""
    return [arg for arg in argv if arg != flag]


# Running coroutines with clean signal handling.


def _run_value(coroutine: Coroutine[Any, Any, str]) -> str:
    """Run a coroutine that returns text, with Ctrl-C handled as usual."""
    result: list[str] = []

    async def keep() -> int:
        result.append(await coroutine)
        return 0

    status = _run(keep())
    if not result:
        raise SystemExit(status)
    return result[0]


def _run(coroutine: Coroutine[Any, Any, int | None]) -> int:
    """Run ``coroutine``; a stop signal cancels it and exits 128+signal.

    Cancelling (rather than dying on the signal) lets every ``finally`` run,
    so websockets close with 1000 and the terminal gets its flags back.
    """
    received: list[int] = []

    async def supervise() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await coroutine or 0
        except asyncio.CancelledError:
            if received:
                return 128 + received[0]
            raise
        finally:
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    return asyncio.run(supervise())


def _configure_logging(verbosity: int) -> None:
    """Send wsbridge's log to stderr at the level -v asks for."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("wsbridge: %(message)s"))
    root = logging.getLogger("wsbridge")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # The wire logger would show the handshake headers, and with them the
    # access key: it never goes below INFO.
    logging.getLogger("wsbridge.wire").setLevel(max(level, logging.INFO))
    logging.getLogger("asyncssh").setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(args.verbose)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except WsbridgeError as exc:
        print(f"wsbridge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Our own stdout went away (``wsbridge ... | head``): exit as a
        # process killed by SIGPIPE would.
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

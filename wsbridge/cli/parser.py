"""The argument parser of every ``wsbridge`` command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import __version__
from ..endpoint import AuthMode
from ..errors import UsageError
from ..paths import EMULATOR_PORT
from ..profiles import DEFAULT_PROFILE
from ..settings import ENV_ACCESS_KEY, ENV_PROFILE, ENV_PROJECT, ENV_SERVER
from . import commands as handlers

__all__ = ["build_parser", "workspace_name"]

_EPILOG = f"""\
environment (flags override it; it overrides the saved profile):
  {ENV_PROFILE}     saved login to use
  {ENV_SERVER}      server URL
  {ENV_PROJECT}     project id
  {ENV_ACCESS_KEY}  the access key itself

exit status: the remote exit code; 255 for connection, authentication and
protocol failures; 2 for usage errors; 130 after Ctrl-C.
"""


def workspace_name(text: str) -> str:
    """Accept a workspace name that can stand as one segment of a URL path."""
    if not text or text in (".", "..") or "/" in text or text != text.strip():
        raise argparse.ArgumentTypeError(f"invalid workspace name {text!r}")
    return text


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
        "for OpenSSH's ProxyCommand: ProxyCommand wsbridge proxy %n",
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
    proxy.add_argument("workspace", metavar="WORKSPACE", type=workspace_name)
    proxy.set_defaults(handler=handlers.proxy)

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
    listen.add_argument("workspace", metavar="WORKSPACE", type=workspace_name)
    listen.set_defaults(handler=handlers.listen)

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
        remote.add_argument("workspace", metavar="WORKSPACE", type=workspace_name)
        remote.add_argument(
            "command",
            nargs=argparse.REMAINDER,
            metavar="-- COMMAND",
            help="the command to run"
            + (" (default: a login shell)" if name == "shell" else ""),
        )
        remote.set_defaults(handler=handlers.remote, handler_name=name)

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
        command.add_argument("workspace", metavar="WORKSPACE", type=workspace_name)
        command.set_defaults(handler=handlers.lifecycle, action=action)

    login = commands.add_parser(
        "login",
        parents=[connection],
        help="check an access key and save it as a profile",
        description="Check an access key against --server and save server, "
        "project, auth mode and key as a profile. The key comes from "
        "--access-key-file (- for stdin), or WSBRIDGE_ACCESS_KEY, or a hidden "
        "prompt on a terminal.",
    )
    login.set_defaults(handler=handlers.login)
    logout = commands.add_parser(
        "logout", help="forget a saved profile", parents=[_profile_option()]
    )
    _add_verbosity(logout)
    logout.set_defaults(handler=handlers.logout)

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
    config_ssh.set_defaults(handler=handlers.config_ssh)

    doctor = commands.add_parser(
        "doctor",
        parents=[connection],
        help="check the set-up: ssh client, ssh config, profile, server, TLS",
    )
    _add_ssh_config_options(doctor)
    doctor.set_defaults(handler=handlers.doctor)

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
    emulator.set_defaults(handler=handlers.emulator)

"""Command handlers: each turns parsed arguments into one library call."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from ..endpoint import AuthMode
from ..errors import ConfigError, UsageError
from ..lifecycle import build_options, print_status, run_action
from ..paths import emulator_state_dir
from ..profiles import DEFAULT_PROFILE, ProfileStore
from ..render import LogView, OutputMode
from ..settings import ENV_PROFILE, ConnectionSettings
from .runner import exit_status, run_async, run_value


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


def login(args: argparse.Namespace) -> int:
    """Run ``wsbridge login``."""
    from ..login import login, read_key_for_login

    key = read_key_for_login(args.access_key_file)
    name = args.profile or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    print(run_value(login(_settings(args), name, key)))
    return 0


def logout(args: argparse.Namespace) -> int:
    """Run ``wsbridge logout``."""
    name = args.profile or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    store = ProfileStore()
    if not store.remove(name):
        raise ConfigError(f"no saved profile named {name!r}")
    print(f"removed profile {name!r} from {store.path}")
    return 0


def proxy(args: argparse.Namespace) -> int:
    """Run ``wsbridge proxy``."""
    from ..bridges.stdio import run_proxy

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
    return exit_status(run_async(run_proxy(endpoint, workspace, view=view)))


def remote(args: argparse.Namespace) -> int:
    """Run ``wsbridge shell`` or ``wsbridge exec``."""
    from ..bridges.ssh import run_command

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
        run_async(
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


def listen(args: argparse.Namespace) -> int:
    """Run ``wsbridge listen``."""
    from ..bridges.tcp import format_address, serve_tcp

    endpoint = _settings(args).resolve()

    def announce(host: str, port: int) -> None:
        where = format_address(host, port)
        print(f"wsbridge listening on {where} (workspace {args.workspace})", flush=True)

    return run_async(
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


def config_ssh(args: argparse.Namespace) -> int:
    """Run ``wsbridge config-ssh``."""
    from ..sshconfig import configure

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

    return run_async(run())


def doctor(args: argparse.Namespace) -> int:
    """Run ``wsbridge doctor``."""
    from ..doctor import Verdict, run_checks

    async def run() -> int:
        checks = await run_checks(_settings(args), args.ssh_config, args.host_suffix)
        for check in checks:
            print(check, flush=True)
        failed = any(check.verdict is Verdict.FAIL for check in checks)
        return 1 if failed else 0

    return run_async(run())


def lifecycle(args: argparse.Namespace) -> int:
    """Run ``wsbridge up|stop|status|delete``."""
    endpoint = _settings(args).resolve()
    options = build_options(args.option, args.options)
    if args.action == "status":
        view = LogView(OutputMode.for_stream(sys.stderr), verbose=args.verbose > 0)
        return exit_status(
            run_async(
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

    return exit_status(run_async(run()))


def emulator(args: argparse.Namespace) -> int:
    """Run ``wsbridge emulator``."""
    from .. import emulator

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
        config = shlex.quote(str(settings.state_dir / "ssh_config"))
        print(f"try: ssh -F {config} demo 'echo hello'")
        return 0

    def announce(url: str) -> None:
        print(f"wsbridge emulator listening on {url}", flush=True)

    run_async(emulator.run_emulator(settings, announce))
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

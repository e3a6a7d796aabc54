"""Build OpenSSH ``ssh`` and ``scp`` command lines that go through wsbridge.

Every option is on the command line (``-F /dev/null``) so the user's own
configuration, agent and known hosts never take part.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The name under which known_hosts pins the server's host key, whatever the
# destination is called, so one pinned line serves ssh and scp alike.
HOST_KEY_ALIAS = "wsbridge-test-target"

# Bounds the TCP connect and, with a ProxyCommand, the banner exchange.
CONNECT_TIMEOUT_SECONDS = 20


def proxy_argv(
    server: str | None,
    workspace: str,
    *,
    access_key_file: Path | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """Return the argv of ``wsbridge proxy`` for ``workspace``."""
    argv = [sys.executable, "-m", "wsbridge", "proxy"]
    if server is not None:
        argv += ["--server", server]
    if access_key_file is not None:
        argv += ["--access-key-file", str(access_key_file)]
    return [*argv, *options, workspace]


def proxy_command(argv: Sequence[str]) -> str:
    """Quote ``argv`` for ssh's ProxyCommand, which a shell runs."""
    # ssh expands %-tokens in ProxyCommand before the shell sees it.
    return shlex.join(argv).replace("%", "%%")


def write_known_hosts(path: Path, host_public_key: str) -> Path:
    """Pin ``host_public_key`` (``type base64``) as the only trusted host key."""
    path.write_text(f"{HOST_KEY_ALIAS} {host_public_key}\n")
    return path


@dataclass(frozen=True)
class OpenSSH:
    """A user identity and a pinned host key, ready to build command lines."""

    identity: Path
    known_hosts: Path

    def options(
        self, proxy: Sequence[str] | None = None, port: int | None = None
    ) -> list[str]:
        """Return the options ``ssh`` and ``scp`` share."""
        options = ["-F", "/dev/null", "-i", str(self.identity)]
        settings = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "HostKeyAlias": HOST_KEY_ALIAS,
            "StrictHostKeyChecking": "yes",
            "ConnectTimeout": str(CONNECT_TIMEOUT_SECONDS),
            "LogLevel": "ERROR",
        }
        if proxy is not None:
            settings["ProxyCommand"] = proxy_command(proxy)
        if port is not None:
            settings["Port"] = str(port)
        for name, value in settings.items():
            options += ["-o", f"{name}={value}"]
        return options

    def ssh(
        self,
        destination: str,
        command: str,
        *,
        proxy: Sequence[str] | None = None,
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """Return an ``ssh`` argv that runs ``command`` on ``destination``."""
        return ["ssh", *self.options(proxy, port), *extra, destination, command]

    def scp(
        self,
        source: str,
        target: str,
        *,
        proxy: Sequence[str] | None = None,
        port: int | None = None,
    ) -> list[str]:
        """Return an ``scp`` argv that copies ``source`` to ``target``."""
        return ["scp", "-q", *self.options(proxy, port), source, target]

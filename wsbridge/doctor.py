"""``wsbridge doctor``: check a set-up end to end, one line per check.

Each check gives a verdict (ok, warn or FAIL), what it found, and for a
problem the command or change that fixes it. Warnings do not fail the
run; a failure of anything needed to connect does.
"""

from __future__ import annotations

import enum
import os
import shlex
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from .api import probe
from .endpoint import Endpoint
from .errors import AuthRejected, WsbridgeError
from .settings import ENV_SERVER, ConnectionSettings
from .sshconfig import (
    BEGIN_MARKER,
    END_MARKER,
    find_shadowing,
    sample_host,
    wsbridge_command,
)

__all__ = ["Check", "Verdict", "run_checks"]

# Clock difference past which signed tokens and TLS validity get fragile.
CLOCK_SKEW_LIMIT = 60.0


class Verdict(enum.Enum):
    """How a check came out."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.verdict.value:<5} {self.name:<12} {self.detail}{fix}"


async def run_checks(
    settings: ConnectionSettings, ssh_config: Path, host_suffix: str
) -> list[Check]:
    """Run every check and return the report."""
    checks = [_ssh_client(), *_config_block(ssh_config, host_suffix)]
    checks.append(_profile(settings))
    try:
        endpoint = settings.resolve()
    except WsbridgeError as exc:
        checks.append(Check("settings", Verdict.FAIL, str(exc)))
        return checks
    checks += [_tls(endpoint), _proxy(endpoint)]
    checks += await _server(endpoint)
    return checks


def _ssh_client() -> Check:
    """Find the OpenSSH client and its version."""
    ssh = shutil.which("ssh")
    if ssh is None:
        return Check(
            "ssh client", Verdict.FAIL, "no ssh on PATH",
            "install OpenSSH (Debian: apt-get install openssh-client)",
        )
    result = subprocess.run(
        [ssh, "-V"], capture_output=True, text=True, timeout=10, check=False
    )
    version = (result.stderr or result.stdout).strip().splitlines()
    return Check("ssh client", Verdict.OK, f"{ssh}: {version[0] if version else '?'}")


def _config_block(ssh_config: Path, host_suffix: str) -> list[Check]:
    """Check the managed block: present, current, runnable, not shadowed."""
    fix = "run: wsbridge config-ssh"
    try:
        text = ssh_config.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Check("ssh config", Verdict.FAIL, f"{ssh_config} does not exist", fix)]
    except OSError as exc:
        return [Check("ssh config", Verdict.FAIL, f"cannot read {ssh_config}: {exc}")]
    if BEGIN_MARKER not in text or END_MARKER not in text:
        return [
            Check("ssh config", Verdict.FAIL, f"no wsbridge block in {ssh_config}", fix)
        ]
    block = text[text.index(BEGIN_MARKER) : text.index(END_MARKER)]
    checks = []
    proxy_line = next(
        (
            line.strip().removeprefix("ProxyCommand ")
            for line in block.splitlines()
            if line.strip().startswith("ProxyCommand ")
        ),
        "",
    )
    try:
        words = shlex.split(proxy_line.replace("%%", "%"))
    except ValueError:
        # An unbalanced quote, from editing by hand: no program to name.
        words = []
    program = words[0] if words else ""
    if not program or not os.access(program, os.X_OK):
        checks.append(
            Check(
                "ssh config",
                Verdict.FAIL,
                f"the block runs {program or 'nothing'}, which is not executable",
                fix,
            )
        )
    elif words[: len(ours := wsbridge_command())] != ours:
        # Current means it runs this wsbridge: after a reinstall elsewhere
        # the block would silently keep using the old copy.
        checks.append(
            Check(
                "ssh config",
                Verdict.WARN,
                f"the block runs {program}, not this wsbridge ({' '.join(ours)})",
                fix,
            )
        )
    else:
        detail = f"block present and current in {ssh_config}"
        checks.append(Check("ssh config", Verdict.OK, detail))
    # Ask about a host the block serves: a per-workspace block has no
    # wildcard entry.
    host = sample_host(block) or f"workspace.{host_suffix}"
    try:
        shadow = find_shadowing(ssh_config, block, host)
    except WsbridgeError as exc:
        shadow = str(exc)
    if shadow:
        checks.append(
            Check("shadowing", Verdict.FAIL, shadow, "move the wsbridge block up")
        )
    else:
        checks.append(Check("shadowing", Verdict.OK, f"{host} uses the wsbridge block"))
    return checks


def _profile(settings: ConnectionSettings) -> Check:
    """Name the saved profile in effect."""
    try:
        profile = settings.selected_profile(os.environ)
    except WsbridgeError as exc:
        return Check("profile", Verdict.FAIL, str(exc))
    if profile is None:
        return Check(
            "profile", Verdict.OK, "none; settings come from flags and environment"
        )
    project = profile.project or "default"
    detail = f"{profile.name!r}: {profile.server}, project {project}"
    if settings.server or os.environ.get(ENV_SERVER):
        # Its key then stays home: a profile's key goes only to its server.
        detail += f"; its server is overridden by --server or {ENV_SERVER}"
    return Check("profile", Verdict.OK, detail)


def _tls(endpoint: Endpoint) -> Check:
    """Describe the TLS settings in effect."""
    if not endpoint.is_secure:
        host = urlsplit(endpoint.server).hostname or ""
        loopback = host in ("127.0.0.1", "localhost", "::1")
        return Check(
            "tls",
            Verdict.OK if loopback else Verdict.WARN,
            "plain ws:// (no TLS)" + (" on loopback" if loopback else ""),
        )
    context = endpoint.ssl_context
    if context is not None and not context.check_hostname:
        return Check(
            "tls", Verdict.WARN, "certificates are NOT verified (--insecure)",
            "drop --insecure; use --ca-file for a private CA",
        )
    return Check("tls", Verdict.OK, "certificates verified")


def _proxy(endpoint: Endpoint) -> Check:
    """Say whether an HTTP proxy applies to the server."""
    host = urlsplit(endpoint.server).hostname or ""
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https" if endpoint.is_secure else "http")
    if not proxy or urllib.request.proxy_bypass(host):
        return Check("proxy", Verdict.OK, "direct connection (no proxy applies)")
    parts = urlsplit(proxy)
    # Show where the proxy is, never its credentials.
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")
    return Check("proxy", Verdict.OK, f"through {where}")


async def _server(endpoint: Endpoint) -> list[Check]:
    """Check that the server answers and accepts the key; compare clocks."""
    host = endpoint.display_host
    try:
        answer = await probe(endpoint)
    except AuthRejected as exc:
        return [
            Check("server", Verdict.FAIL, str(exc), "wsbridge login --server URL")
        ]
    except WsbridgeError as exc:
        return [Check("server", Verdict.FAIL, str(exc), "check --server and network")]
    count = len(answer.workspaces)
    checks = [
        Check(
            "server",
            Verdict.OK,
            f"{host} answers and accepts the key ({count} workspace"
            f"{'' if count == 1 else 's'} in project {endpoint.project!r})",
        )
    ]
    if answer.server_time is None:
        checks.append(Check("clock", Verdict.OK, "the server does not report its time"))
        return checks
    skew = (datetime.now(UTC) - answer.server_time).total_seconds()
    verdict = Verdict.OK if abs(skew) <= CLOCK_SKEW_LIMIT else Verdict.WARN
    checks.append(
        Check(
            "clock",
            verdict,
            f"local clock is {abs(skew):.0f} s {'ahead of' if skew >= 0 else 'behind'}"
            " the server",
            "" if verdict is Verdict.OK else "sync the clock (NTP)",
        )
    )
    return checks

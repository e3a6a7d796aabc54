"""The block of the user's ssh config that wsbridge owns.

``wsbridge config-ssh`` writes one block between two marker lines and
never touches a byte outside it: rewriting with the same settings changes
nothing, the previous file is kept as a backup, and the file keeps its
mode. What OpenSSH will actually do for a host is asked of OpenSSH itself
(``ssh -G``), which is how a user's earlier entry that shadows ours is
found.

Building and splicing the block are pure functions; ``apply`` does the
file I/O.
"""

from __future__ import annotations

import difflib
import getpass
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .api import list_workspaces
from .errors import ConfigError, UsageError
from .files import PRIVATE_MODE, replace_file
from .paths import emulator_client_key, state_dir
from .settings import ENV_ACCESS_KEY, ENV_PROJECT, ENV_SERVER, ConnectionSettings

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "BlockSettings",
    "ConfigChange",
    "apply",
    "build_block",
    "configure",
    "find_shadowing",
    "proxy_arguments",
    "remove_block",
    "sample_host",
    "splice_block",
    "wsbridge_command",
]

BEGIN_MARKER = "# --- BEGIN WSBRIDGE: managed by 'wsbridge config-ssh'; do not edit ---"
END_MARKER = "# --- END WSBRIDGE ---"

# A marker line may end in CRLF when an editor converted the whole file.
_BEGIN_LINE = re.compile(f"^{re.escape(BEGIN_MARKER)}\r?$", re.MULTILINE)
_END_LINE = re.compile(f"^{re.escape(END_MARKER)}\r?$", re.MULTILINE)

DEFAULT_HOST_SUFFIX = "devpod"

# Options every entry gets. Keep-alives notice a dead connection the way
# the websocket's own pings do; the connect timeout leaves room for an
# auto-start; host keys are checked, in a file of their own, and a new
# workspace's first key is accepted rather than checking being turned off.
_KEEPALIVE_OPTIONS = (
    ("ServerAliveInterval", "30"),
    ("ServerAliveCountMax", "4"),
    ("ConnectTimeout", "300"),
    ("StrictHostKeyChecking", "accept-new"),
)

# A workspace name as DevPod allows it; anything else could smuggle ssh
# config syntax into the file.
_HOST_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def wsbridge_command() -> list[str]:
    """Return the argv that runs this very wsbridge, by absolute path."""
    script = Path(sys.argv[0])
    if script.name == "__main__.py" or not script.name:
        return [sys.executable, "-m", "wsbridge"]
    found = shutil.which(str(script)) if not script.is_absolute() else str(script)
    return [str(Path(found or script).absolute())]


@dataclass(frozen=True)
class BlockSettings:
    """What goes into the managed block."""

    known_hosts_file: Path
    command: Sequence[str] = field(default_factory=wsbridge_command)
    proxy_arguments: Sequence[str] = ()
    host_suffix: str = DEFAULT_HOST_SUFFIX
    user: str = field(default_factory=getpass.getuser)
    extra_options: Sequence[tuple[str, str]] = ()
    workspaces: Sequence[str] | None = None


def _config_quote(argument: str) -> str:
    """Quote one ProxyCommand word for the shell ssh runs it with.

    ssh hands ProxyCommand to ``sh -c`` after expanding ``%`` tokens, so a
    word is shell-quoted and a literal ``%`` is doubled.
    """
    return shlex.quote(argument).replace("%", "%%")


def build_block(settings: BlockSettings) -> str:
    """Return the managed block, markers included, ending in a newline."""
    suffix = settings.host_suffix
    if not _HOST_TOKEN.match(suffix):
        raise UsageError(f"invalid host suffix {suffix!r}")
    base = [*settings.command, "proxy", *settings.proxy_arguments]
    for name, value in settings.extra_options:
        if not _OPTION_NAME.match(name) or "\n" in value:
            raise UsageError(f"invalid ssh option {name}={value!r}")
    # OpenSSH takes the first value it reads for an option, so the user's
    # own options come first and replace our defaults of the same name.
    chosen = {name.lower() for name, _ in settings.extra_options}
    defaults = [
        ("User", settings.user),
        *_KEEPALIVE_OPTIONS,
        ("UserKnownHostsFile", _config_quote(str(settings.known_hosts_file))),
    ]
    options = [
        *settings.extra_options,
        *((name, value) for name, value in defaults if name.lower() not in chosen),
    ]

    entries: list[tuple[str, list[str]]] = []
    if settings.workspaces is None:
        # %n is the host as typed; the proxy strips the suffix from it.
        proxy = [*base, "--host-suffix", suffix]
        entries.append((f"*.{suffix}", [*map(_config_quote, proxy), "%n"]))
    else:
        for workspace in sorted(settings.workspaces):
            if not _HOST_TOKEN.match(workspace):
                raise UsageError(f"invalid workspace name {workspace!r}")
            proxy = [*base, workspace]
            entries.append((f"{workspace}.{suffix}", list(map(_config_quote, proxy))))

    lines = [BEGIN_MARKER]
    for pattern, proxy_words in entries:
        lines.append(f"Host {pattern}")
        lines.append(f"    ProxyCommand {' '.join(proxy_words)}")
        lines.extend(f"    {name} {value}" for name, value in options)
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def _block_span(text: str) -> tuple[int, int] | None:
    """Return where the managed block starts and ends in ``text``.

    Raises ConfigError when the markers are damaged (one without the
    other, or more than one block), since guessing could eat user lines.
    """
    begins = [match.start() for match in _BEGIN_LINE.finditer(text)]
    ends = [match.end() for match in _END_LINE.finditer(text)]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ConfigError(
            "the wsbridge block's marker lines are damaged; fix or remove them "
            "by hand first"
        )
    end = ends[0]
    if text[end : end + 1] == "\n":
        end += 1
    return begins[0], end


def splice_block(text: str, block: str) -> str:
    """Put ``block`` into ``text``: in place of the old one, else at the end."""
    span = _block_span(text)
    if span is not None:
        start, end = span
        return text[:start] + block + text[end:]
    if not text:
        return block
    # A blank line sets the block apart; after a last line without a
    # newline only that newline is added, so that removal can tell the two
    # cases apart and give back the exact bytes.
    return text + "\n" + block


def remove_block(text: str) -> str:
    """Take the managed block (and the line break before it) out of ``text``.

    Undoes ``splice_block``: a block it appended after a blank line takes
    that line with it, and one it appended straight after a last line with
    no newline takes the newline it had to add.
    """
    span = _block_span(text)
    if span is None:
        return text
    start, end = span
    before, after = text[:start], text[end:]
    appended_at_end = before.endswith("\n") and not after
    if before.endswith("\n\n") or appended_at_end:
        before = before[:-1]
    return before + after


@dataclass(frozen=True)
class ConfigChange:
    """The outcome of ``apply``: what changed and where the backup went."""

    path: Path
    changed: bool
    diff: str
    backup: Path | None = None


def apply(path: Path, block: str | None, *, dry_run: bool = False) -> ConfigChange:
    """Put ``block`` into ``path`` (None: take it out), if that changes it.

    The previous file is copied to ``PATH.wsbridge.bak``; the new one is
    written beside it and renamed over it, with the old file's mode (0600
    for a new file, as ssh expects).
    """
    target = path.resolve() if path.is_symlink() else path
    try:
        # newline="" keeps CRLF line ends as they are, outside the block.
        with target.open(encoding="utf-8", newline="") as file:
            old = file.read()
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        old, mode = "", None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    new = remove_block(old) if block is None else splice_block(old, block)
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=str(path),
            tofile=f"{path} (new)",
        )
    )
    if new == old or dry_run:
        return ConfigChange(path, changed=new != old, diff=diff)

    backup: Path | None = None
    if mode is not None:
        backup = target.with_name(target.name + ".wsbridge.bak")
        try:
            shutil.copy2(target, backup)
        except OSError as exc:
            raise ConfigError(f"cannot back up {path}: {exc.strerror}") from exc
    replace_file(
        target, new, mode=mode if mode is not None else PRIVATE_MODE, newline=""
    )
    return ConfigChange(path, changed=True, diff=diff, backup=backup)


def resolved_options(config: Path, host: str) -> dict[str, str]:
    """Ask OpenSSH which options it would use for ``host`` (``ssh -G``)."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise ConfigError("no ssh client on PATH")
    result = subprocess.run(
        [ssh, "-G", "-F", str(config), host],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["failed"])[0]
        raise ConfigError(f"ssh -G could not read {config}: {first}")
    options: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(" ")
        options.setdefault(name.lower(), value)
    return options


def _check_with_openssh(block: str, host: str) -> None:
    """Have OpenSSH parse ``block`` alone before it goes into a real config.

    A bad ``--ssh-option`` or ``--user`` would otherwise break ssh for
    every host, not only the workspaces. Skipped when there is no ssh.

    Raises:
        UsageError: OpenSSH rejects the block.
    """
    if shutil.which("ssh") is None:
        return
    with tempfile.TemporaryDirectory(prefix="wsbridge-") as directory:
        candidate = Path(directory) / "config"
        candidate.write_text(block, encoding="utf-8")
        try:
            resolved_options(candidate, host)
        except ConfigError as exc:
            # Keep OpenSSH's own words, without the temporary file's name.
            reason = re.sub(r"^.*?line \d+: ", "", str(exc))
            raise UsageError(
                f"ssh rejects the block, nothing was written: {reason}"
            ) from None


def sample_host(block: str) -> str | None:
    """Return a host name that the block's first entry serves."""
    for line in block.splitlines():
        keyword, _, pattern = line.strip().partition(" ")
        if keyword == "Host":
            return pattern.replace("*", "workspace")
    return None


def find_shadowing(config: Path, block: str, sample_host: str) -> str | None:
    """Say what in ``config`` overrides our ProxyCommand for ``sample_host``.

    Returns None when OpenSSH would use our block's ProxyCommand.
    """
    expected = None
    for line in block.splitlines():
        stripped = line.strip()
        if stripped.startswith("ProxyCommand "):
            expected = stripped.removeprefix("ProxyCommand ")
            break
    if expected is None:
        return None
    # ssh -G prints ProxyCommand as written, tokens unexpanded.
    actual = resolved_options(config, sample_host).get("proxycommand")
    if actual == expected:
        return None
    return (
        f"an entry earlier in {config} sets ProxyCommand for {sample_host} "
        f"({actual or 'none'}), so the wsbridge block is shadowed; move that "
        "entry below the block or narrow its Host pattern"
    )


def proxy_arguments(
    settings: ConnectionSettings, environ: Mapping[str, str] = os.environ
) -> list[str]:
    """Return the proxy flags that pin down what ``settings`` resolve to.

    An editor starts ssh with its own environment, so whatever came from
    flags or environment variables is written out as flags; a profile is
    named, never copied (its key stays in the profile file).
    """
    arguments: list[str] = []
    profile = settings.selected_profile(environ)
    if profile is not None:
        arguments += ["--profile", profile.name]
    server = settings.server or environ.get(ENV_SERVER)
    if server:
        arguments += ["--server", server]
    project = settings.project or environ.get(ENV_PROJECT)
    if project:
        arguments += ["--project", project]
    if settings.access_key_file is not None:
        arguments += ["--access-key-file", str(settings.access_key_file.absolute())]
    if settings.auth is not None:
        arguments += ["--auth", settings.auth.value]
    if settings.ca_file is not None:
        arguments += ["--ca-file", str(settings.ca_file.absolute())]
    if settings.insecure:
        arguments.append("--insecure")
    return arguments


async def configure(
    settings: ConnectionSettings,
    ssh_config: Path,
    *,
    host_suffix: str = DEFAULT_HOST_SUFFIX,
    extra_options: Sequence[tuple[str, str]] = (),
    wildcard: bool = True,
    user: str | None = None,
    dry_run: bool = False,
    remove: bool = False,
) -> list[str]:
    """Write, refresh or remove the block; return lines to tell the user."""
    if remove:
        change = apply(ssh_config, None, dry_run=dry_run)
        return _report(change, dry_run, "removed the wsbridge block from")

    messages: list[str] = []
    endpoint = settings.resolve()
    workspaces = None
    if not wildcard:
        workspaces = await list_workspaces(endpoint)
        if not workspaces:
            messages.append(f"note: {endpoint.display_host} lists no workspaces")
    if (
        settings.access_key_file is None
        and os.environ.get(ENV_ACCESS_KEY)
        and settings.selected_profile(os.environ) is None
    ):
        messages.append(
            f"warning: the key comes from {ENV_ACCESS_KEY}, which ssh started by "
            "an editor may not see; run 'wsbridge login' to save it in a profile"
        )
    emulator_key = emulator_client_key(endpoint.server)
    if emulator_key is not None:
        # The demo set-up: let plain ssh offer the emulator's own key too.
        extra_options = [("IdentityFile", _config_quote(str(emulator_key))),
                         *extra_options]
    known_hosts = state_dir() / "ssh_known_hosts"
    block = build_block(
        BlockSettings(
            known_hosts_file=known_hosts,
            proxy_arguments=proxy_arguments(settings),
            host_suffix=host_suffix,
            user=user or getpass.getuser(),
            extra_options=extra_options,
            workspaces=workspaces,
        )
    )
    _check_with_openssh(block, sample_host(block) or f"workspace.{host_suffix}")
    change = apply(ssh_config, block, dry_run=dry_run)
    messages += _report(change, dry_run, "wrote the wsbridge block to")
    if dry_run:
        return messages
    # ssh cannot record a new host key in a file whose directory is missing.
    try:
        known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {known_hosts.parent}: {exc}") from exc
    sample = sample_host(block) or f"workspace.{host_suffix}"
    shadow = find_shadowing(ssh_config, block, sample)
    if shadow:
        messages.append(f"warning: {shadow}")
    else:
        messages.append(f"ssh {sample} now goes through wsbridge")
    return messages


def _report(change: ConfigChange, dry_run: bool, done: str) -> list[str]:
    """Describe ``change`` for the user."""
    if dry_run:
        return [change.diff.rstrip("\n")] if change.diff else ["no change"]
    if not change.changed:
        return [f"{change.path} is up to date"]
    lines = [f"{done} {change.path}"]
    if change.backup is not None:
        lines.append(f"previous version kept in {change.backup}")
    return lines

"""The emulator's state directory: access key, SSH keys and client config.

On first use the directory gets everything a new user needs::

    access_key              the key clients must present (0600)
    ssh_host_ed25519_key    the embedded SSH server's host key (0600)
    client_key(.pub)        a key pair the generated ssh_config uses (0600)
    authorized_keys         keys the embedded SSH server accepts (0600)
    ssh_config              an OpenSSH config whose ProxyCommand is wsbridge
    known_hosts             the host key under the alias ssh_config names

Secrets are created with their final mode by ``os.open``, never widened and
narrowed afterwards, and none of them is ever logged.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from ..errors import ConfigError
from ..files import replace_file

__all__ = [
    "HOST_KEY_ALIAS",
    "LOG_FILE",
    "PID_FILE",
    "STATE_DIR_MODE",
    "EmulatorState",
    "prepare_state",
    "proxy_command_argv",
    "write_client_config",
]

logger = logging.getLogger("wsbridge.emulator")

# Bytes of randomness in a generated access key (256 bits).
ACCESS_KEY_BYTES = 32

STATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

# ed25519: small, fast, and accepted by every OpenSSH still in use.
KEY_ALGORITHM = "ssh-ed25519"

ACCESS_KEY_FILE = "access_key"
HOST_KEY_FILE = "ssh_host_ed25519_key"
CLIENT_KEY_FILE = "client_key"
AUTHORIZED_KEYS_FILE = "authorized_keys"
SSH_CONFIG_FILE = "ssh_config"
KNOWN_HOSTS_FILE = "known_hosts"
PID_FILE = "emulator.pid"
LOG_FILE = "emulator.log"

# The name the generated ssh_config and known_hosts agree on, whatever
# workspace name the user types.
HOST_KEY_ALIAS = "wsbridge-emulator"


@dataclass(frozen=True)
class EmulatorState:
    """The loaded contents of a prepared state directory."""

    directory: Path
    access_key_file: Path
    access_key: str = field(repr=False)
    host_key: asyncssh.SSHKey = field(repr=False)

    @property
    def client_key_file(self) -> Path:
        """Return the private key the generated ssh_config logs in with."""
        return self.directory / CLIENT_KEY_FILE

    @property
    def authorized_keys_file(self) -> Path:
        """Return the keys file the embedded SSH server checks."""
        return self.directory / AUTHORIZED_KEYS_FILE

    @property
    def ssh_config_file(self) -> Path:
        """Return the generated OpenSSH client config."""
        return self.directory / SSH_CONFIG_FILE

    @property
    def known_hosts_file(self) -> Path:
        """Return the known_hosts file the generated ssh_config trusts."""
        return self.directory / KNOWN_HOSTS_FILE


def prepare_state(
    directory: Path, access_key_file: Path | None = None
) -> EmulatorState:
    """Create what is missing in ``directory`` and load the rest.

    Args:
        directory: the state directory; created (0700) if missing.
        access_key_file: where the access key lives; defaults to
            ``directory / "access_key"``. Created with a random key if
            missing, read (whitespace stripped) if present.

    Raises:
        ConfigError: a file cannot be created or read, or holds no key.
    """
    directory = directory.expanduser().absolute()
    try:
        directory.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the state directory {directory}: {exc.strerror}"
        ) from exc

    if access_key_file is None:
        access_key_file = directory / ACCESS_KEY_FILE
    access_key_file = access_key_file.expanduser().absolute()

    access_key = _load_or_create_access_key(access_key_file)
    host_key = _load_or_create_key(directory / HOST_KEY_FILE, "host")
    _ensure_client_key(directory)
    return EmulatorState(directory, access_key_file, access_key, host_key)


def write_client_config(
    state: EmulatorState,
    url: str,
    host_key: asyncssh.SSHKey | None,
    proxy_argv: Sequence[str] | None = None,
) -> Path:
    """(Re)write ``ssh_config`` and ``known_hosts`` for a server at ``url``.

    ``host_key`` is the key the SSH server behind the emulator presents;
    None leaves known_hosts empty, so OpenSSH refuses to connect rather than
    trust an unknown key. ``proxy_argv`` is the command that runs wsbridge,
    found by ``proxy_command_argv`` when not given.

    Raises:
        ConfigError: a path cannot be written into an OpenSSH config, or a
            file cannot be written.
    """
    if proxy_argv is None:
        proxy_argv = proxy_command_argv()
    proxy_command = " ".join(
        [
            *(_shell_quote(arg) for arg in proxy_argv),
            "proxy",
            "--server",
            _shell_quote(url),
            "--access-key-file",
            _shell_quote(str(state.access_key_file)),
            "%n",
        ]
    )
    lines = [
        "# Written by the wsbridge emulator on every start; edits are lost.",
        "Host *",
        f"    ProxyCommand {proxy_command}",
        f"    IdentityFile {_config_quote(state.client_key_file)}",
        "    IdentitiesOnly yes",
        f"    User {pwd.getpwuid(os.getuid()).pw_name}",
        f"    HostKeyAlias {HOST_KEY_ALIAS}",
        f"    UserKnownHostsFile {_config_quote(state.known_hosts_file)}",
        "    StrictHostKeyChecking yes",
    ]
    replace_file(state.ssh_config_file, "\n".join(lines) + "\n")

    known_hosts = ""
    if host_key is not None:
        public_line = host_key.export_public_key().decode("ascii").strip()
        known_hosts = f"{HOST_KEY_ALIAS} {public_line}\n"
    replace_file(state.known_hosts_file, known_hosts)
    return state.ssh_config_file


def proxy_command_argv() -> list[str]:
    """Return the command that runs this wsbridge from any directory.

    The running console script wins, then one on PATH; as a last resort
    this interpreter runs the package as a module.
    """
    script = Path(sys.argv[0])
    if script.name == "wsbridge" and script.is_file():
        return [str(script.absolute())]
    on_path = shutil.which("wsbridge")
    if on_path is not None:
        return [str(Path(on_path).absolute())]
    return [sys.executable, "-m", "wsbridge"]


def _load_or_create_access_key(path: Path) -> str:
    """Return the access key in ``path``, creating a random one if missing."""
    if not path.exists():
        key = secrets.token_urlsafe(ACCESS_KEY_BYTES)
        if _create_private_file(path, key + "\n"):
            logger.info("created a new access key in %s", path)
            return key

    try:
        stored = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the access key file {path}: {exc}") from exc
    if not stored:
        raise ConfigError(f"the access key file {path} is empty")
    return stored


def _load_or_create_key(path: Path, role: str) -> asyncssh.SSHKey:
    """Return the private key in ``path``, generating it on first use."""
    if not path.exists():
        key = asyncssh.generate_private_key(KEY_ALGORITHM, comment=f"wsbridge-{role}")
        if _create_private_file(path, key.export_private_key().decode("ascii")):
            logger.info("created a new SSH %s key in %s", role, path)
            return key

    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise ConfigError(f"cannot read the SSH {role} key {path}: {exc}") from exc


def _ensure_client_key(directory: Path) -> None:
    """Create the client key pair once and authorise it for the embedded SSH."""
    private_path = directory / CLIENT_KEY_FILE
    if private_path.exists():
        return
    key = asyncssh.generate_private_key(KEY_ALGORITHM, comment="wsbridge-client")
    if not _create_private_file(private_path, key.export_private_key().decode()):
        return

    public_line = key.export_public_key().decode("ascii")
    public_path = directory / (CLIENT_KEY_FILE + ".pub")
    authorized_path = directory / AUTHORIZED_KEYS_FILE
    try:
        public_path.write_text(public_line, encoding="ascii")
        # Appending keeps keys a user added before the first start.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        descriptor = os.open(authorized_path, flags, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "a", encoding="ascii") as authorized:
            authorized.write(public_line)
    except OSError as exc:
        raise ConfigError(f"cannot write the client key files: {exc}") from exc
    logger.info("created a new client key in %s", private_path)


def _create_private_file(path: Path, text: str) -> bool:
    """Write ``text`` to a new 0600 file; return False if it already exists.

    Raises:
        ConfigError: the file cannot be created for another reason.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        descriptor = os.open(path, flags, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    return True


def _check_config_value(value: str) -> None:
    """Refuse a value that cannot be written on one line of an ssh_config."""
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{value!r} contains a line break; move it elsewhere")


def _shell_quote(value: str) -> str:
    """Quote ``value`` for the shell OpenSSH runs a ProxyCommand with.

    OpenSSH expands ``%`` tokens before the shell sees the command, so a
    literal ``%`` is doubled as well.
    """
    _check_config_value(value)
    escaped = "".join("\\" + char if char in '\\"$`' else char for char in value)
    return '"' + escaped.replace("%", "%%") + '"'


def _config_quote(path: Path) -> str:
    """Quote ``path`` as an ssh_config argument that expands ``%`` tokens."""
    value = str(path)
    _check_config_value(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%") + '"'

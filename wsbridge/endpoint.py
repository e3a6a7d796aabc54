"""Where a command websocket goes and how it authenticates.

Every command (``proxy``, lifecycle actions, bridges) reaches the platform
the same way: a server URL, a project, a workspace and an action become one
websocket URL; the access key becomes a header or a cookie; TLS settings
become an ``ssl.SSLContext``. This module is that one place.
"""

from __future__ import annotations

import enum
import json
import os
import ssl
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .errors import ConfigError, UsageError

__all__ = [
    "DEFAULT_PROJECT",
    "AccessKey",
    "AuthMode",
    "Endpoint",
    "make_ssl_context",
    "normalize_server",
    "read_access_key_file",
]

DEFAULT_PROJECT = "default"

# The API path of a workspace instance; see PROTOCOL.md, "Endpoint".
_WORKSPACE_PATH = (
    "/kubernetes/management/apis/management.loft.sh/v1"
    "/namespaces/loft-p-{project}/devpodworkspaceinstances/{workspace}/{action}"
)

# Names of the two ways of presenting the key (PROTOCOL.md, "Authentication").
_COOKIE_NAME = "loft_access_key"

# Characters an access key may never contain: they would let the key break
# out of the header or cookie it is sent in.
_FORBIDDEN_KEY_CHARS = frozenset("\r\n\0 \t;,\"")


class AuthMode(enum.StrEnum):
    """How the access key is presented during the websocket handshake."""

    HEADER = "header"
    COOKIE = "cookie"


@dataclass(frozen=True)
class AccessKey:
    """An access key whose ``repr`` and ``str`` never show the secret."""

    _secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self._secret:
            raise ConfigError("the access key is empty")
        if any(char in _FORBIDDEN_KEY_CHARS for char in self._secret):
            raise ConfigError(
                "the access key contains spaces, quotes or control characters"
            )

    def reveal(self) -> str:
        """Return the secret itself, for the one place that sends it."""
        return self._secret

    def __repr__(self) -> str:
        return "AccessKey(****)"

    __str__ = __repr__


@dataclass(frozen=True)
class Endpoint:
    """A platform server with the credentials and TLS settings to reach it."""

    server: str
    access_key: AccessKey
    project: str = DEFAULT_PROJECT
    auth: AuthMode = AuthMode.HEADER
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def is_secure(self) -> bool:
        """Tell whether the server speaks ``wss://``."""
        return self.server.startswith("wss://")

    @property
    def display_host(self) -> str:
        """Return ``host:port`` of the server, for messages and logs."""
        parts = urlsplit(self.server)
        port = parts.port or (443 if self.is_secure else 80)
        return f"{parts.hostname}:{port}"

    def action_url(
        self,
        workspace: str,
        action: str,
        options: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> str:
        """Build the websocket URL of ``action`` on ``workspace``.

        ``options`` is sent as URL-encoded JSON in the ``options`` parameter;
        ``query`` adds plain parameters such as ``debug=false``.
        """
        path = _WORKSPACE_PATH.format(
            project=quote(self.project, safe=""),
            workspace=quote(workspace, safe=""),
            action=quote(action, safe=""),
        )
        params: dict[str, str] = {}
        if options is not None:
            params["options"] = json.dumps(options, separators=(",", ":"))
        params.update(query or {})
        suffix = f"?{urlencode(params)}" if params else ""
        return f"{self.server}{path}{suffix}"

    def auth_headers(self) -> list[tuple[str, str]]:
        """Return the handshake headers that carry the access key."""
        key = self.access_key.reveal()
        if self.auth is AuthMode.COOKIE:
            return [("Cookie", f"{_COOKIE_NAME}={key}")]
        return [("Authorization", f"Bearer {key}")]


def normalize_server(server: str) -> str:
    """Turn a user's server setting into a ``ws://`` or ``wss://`` base URL.

    A bare ``host`` or ``host:port`` means ``wss://``; ``https://`` maps to
    ``wss://`` and ``http://`` to ``ws://``; websocket schemes stay as given.
    """
    text = server.strip()
    if not text:
        raise UsageError("the server address is empty")
    if "://" not in text:
        text = f"wss://{text}"
    scheme, _, rest = text.partition("://")
    scheme = {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("ws", "wss"):
        raise UsageError(
            f"unsupported server scheme {scheme!r}: use https://, http://, "
            "wss://, ws:// or a bare host[:port]"
        )
    url = f"{scheme}://{rest}".rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"invalid server address {server!r}: {exc}") from exc
    if not parts.hostname:
        raise UsageError(f"invalid server address {server!r}: no host name")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(
            f"invalid server address {server!r}: "
            "it must not carry credentials, a query or a fragment"
        )
    return url


def read_access_key_file(path: Path) -> AccessKey:
    """Read an access key from ``path``, as ssh reads a private key.

    A key file that others can read is used, with a warning on stderr, since
    refusing it would break scripts that worked; the warning says how to fix
    it.
    """
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"access key file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot read access key file {path}: {reason}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and os.name == "posix":
        print(
            f"wsbridge: warning: access key file {path} is readable by others; "
            f"run: chmod 600 {path}",
            file=sys.stderr,
        )
    try:
        return AccessKey(text.strip())
    except ConfigError as exc:
        raise ConfigError(f"access key file {path}: {exc}") from None


def make_ssl_context(
    ca_file: Path | None = None, insecure: bool = False
) -> ssl.SSLContext:
    """Build the TLS context: system CAs, plus ``ca_file``, or no checks."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"cannot load CA file {ca_file}: {reason}") from exc
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

"""Resolve what the user asked for into an ``Endpoint``.

Settings come from flags, then environment variables, then defaults. With
no server configured anywhere, wsbridge talks to the local emulator on its
default port with the key the emulator keeps in its state directory, so a
new user can try everything without an account.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .endpoint import (
    DEFAULT_PROJECT,
    AccessKey,
    AuthMode,
    Endpoint,
    make_ssl_context,
    normalize_server,
    read_access_key_file,
)
from .errors import ConfigError, UsageError
from .paths import EMULATOR_PORT, emulator_state_dir

__all__ = ["ENV_ACCESS_KEY", "ENV_PROJECT", "ENV_SERVER", "ConnectionSettings"]

ENV_SERVER = "WSBRIDGE_SERVER"
ENV_PROJECT = "WSBRIDGE_PROJECT"
ENV_ACCESS_KEY = "WSBRIDGE_ACCESS_KEY"


@dataclass(frozen=True)
class ConnectionSettings:
    """Addressing and authentication as given on the command line."""

    server: str | None = None
    project: str | None = None
    access_key_file: Path | None = None
    auth: AuthMode = AuthMode.HEADER
    ca_file: Path | None = None
    insecure: bool = False

    def resolve(self, environ: Mapping[str, str] = os.environ) -> Endpoint:
        """Combine flags, environment and defaults into an ``Endpoint``.

        Raises:
            UsageError: the server address is malformed.
            ConfigError: no access key can be found, or it cannot be read.
        """
        server_setting = self.server or environ.get(ENV_SERVER)
        project = self.project or environ.get(ENV_PROJECT) or DEFAULT_PROJECT
        if "/" in project or not project.strip():
            raise UsageError(f"invalid project id {project!r}")

        if server_setting:
            server = normalize_server(server_setting)
            access_key = self._access_key(environ, emulator_key=None)
        else:
            server = f"ws://127.0.0.1:{EMULATOR_PORT}"
            access_key = self._access_key(
                environ, emulator_key=emulator_state_dir() / "access_key"
            )

        if self.insecure and server.startswith("wss://"):
            print(
                "wsbridge: warning: --insecure: the server's TLS certificate is "
                "not verified, so the connection can be intercepted",
                file=sys.stderr,
            )
        return Endpoint(
            server=server,
            access_key=access_key,
            project=project,
            auth=self.auth,
            ssl_context=make_ssl_context(self.ca_file, self.insecure),
        )

    def _access_key(
        self, environ: Mapping[str, str], emulator_key: Path | None
    ) -> AccessKey:
        """Find the access key: key file flag, then environment, then emulator."""
        if self.access_key_file is not None:
            return read_access_key_file(self.access_key_file)
        from_env = environ.get(ENV_ACCESS_KEY)
        if from_env is not None:
            try:
                return AccessKey(from_env.strip())
            except ConfigError as exc:
                raise ConfigError(f"{ENV_ACCESS_KEY}: {exc}") from None
        if emulator_key is not None:
            if not emulator_key.exists():
                raise ConfigError(
                    "no server configured and the local emulator has no access "
                    f"key yet ({emulator_key}); start it with 'wsbridge "
                    "emulator', or set --server and an access key"
                )
            return read_access_key_file(emulator_key)
        raise ConfigError(
            f"no access key: set {ENV_ACCESS_KEY} or use --access-key-file FILE"
        )

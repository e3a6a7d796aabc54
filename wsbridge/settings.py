"""Resolve what the user asked for into an ``Endpoint``.

Settings come from flags, then environment variables, then the selected
saved profile (``--profile``, ``WSBRIDGE_PROFILE``, else the one called
``default`` if it exists), then defaults. With no server configured
anywhere, wsbridge talks to the local emulator on its default port with the
key the emulator keeps in its state directory, so a new user can try
everything without an account.

A profile's key is only ever sent to that profile's server: pointing
``--server`` elsewhere needs a key of its own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
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
from .paths import EMULATOR_URL, emulator_state_dir
from .profiles import DEFAULT_PROFILE, Profile, ProfileStore

__all__ = [
    "ENV_ACCESS_KEY",
    "ENV_PROFILE",
    "ENV_PROJECT",
    "ENV_SERVER",
    "ConnectionSettings",
]

ENV_SERVER = "WSBRIDGE_SERVER"
ENV_PROJECT = "WSBRIDGE_PROJECT"
ENV_ACCESS_KEY = "WSBRIDGE_ACCESS_KEY"
ENV_PROFILE = "WSBRIDGE_PROFILE"


@dataclass(frozen=True)
class ConnectionSettings:
    """Addressing and authentication as given on the command line."""

    server: str | None = None
    project: str | None = None
    access_key_file: Path | None = None
    auth: AuthMode | None = None
    ca_file: Path | None = None
    insecure: bool = False
    profile: str | None = None
    profiles: ProfileStore = field(default_factory=ProfileStore)

    def selected_profile(self, environ: Mapping[str, str]) -> Profile | None:
        """Return the profile in effect, if any.

        Raises:
            ConfigError: a profile was named that does not exist.
        """
        name = self.profile or environ.get(ENV_PROFILE)
        if not name:
            return self.profiles.get(DEFAULT_PROFILE)
        profile = self.profiles.get(name)
        if profile is None:
            raise ConfigError(
                f"no saved profile named {name!r}; create it with "
                f"'wsbridge login --profile {name} --server URL'"
            )
        return profile

    def resolve(self, environ: Mapping[str, str] = os.environ) -> Endpoint:
        """Combine flags, environment and defaults into an ``Endpoint``.

        Raises:
            UsageError: the server address is malformed.
            ConfigError: no access key can be found, or it cannot be read.
        """
        profile = self.selected_profile(environ)
        server_setting = self.server or environ.get(ENV_SERVER)
        if not server_setting and profile is not None:
            server_setting = profile.server
        project = (
            self.project
            or environ.get(ENV_PROJECT)
            or (profile.project if profile else None)
            or DEFAULT_PROJECT
        )
        if "/" in project or not project.strip():
            raise UsageError(f"invalid project id {project!r}")
        auth = self.auth or (profile.auth if profile else AuthMode.HEADER)

        if server_setting:
            server = normalize_server(server_setting)
            same_server = profile is not None and (
                normalize_server(profile.server) == server
            )
            access_key = self._access_key(
                environ,
                emulator_key=None,
                profile_key=profile.access_key if same_server and profile else None,
            )
        else:
            server = EMULATOR_URL
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
            auth=auth,
            ssl_context=make_ssl_context(self.ca_file, self.insecure),
        )

    def _access_key(
        self,
        environ: Mapping[str, str],
        emulator_key: Path | None,
        profile_key: AccessKey | None = None,
    ) -> AccessKey:
        """Find the key: key file flag, environment, profile, emulator."""
        if self.access_key_file is not None:
            return read_access_key_file(self.access_key_file)
        from_env = environ.get(ENV_ACCESS_KEY)
        if from_env is not None:
            try:
                return AccessKey(from_env.strip())
            except ConfigError as exc:
                raise ConfigError(f"{ENV_ACCESS_KEY}: {exc}") from None
        if profile_key is not None:
            return profile_key
        if emulator_key is not None:
            if not emulator_key.exists():
                raise ConfigError(
                    "no server configured and the local emulator has no access "
                    f"key yet ({emulator_key}); start it with 'wsbridge "
                    "emulator', or set --server and an access key"
                )
            return read_access_key_file(emulator_key)
        raise ConfigError(
            f"no access key: run 'wsbridge login', set {ENV_ACCESS_KEY} or use "
            "--access-key-file FILE"
        )

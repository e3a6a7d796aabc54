"""Saved logins: named profiles of server, project, auth mode and key.

Profiles live in one TOML file in the user's configuration directory::

    [profiles.work]
    server = "wss://devpod.example.com"
    project = "team-a"
    auth = "header"
    access_key = "..."

The file holds access keys, so it is created readable by its owner alone
(mode 0600, in a 0700 directory) and replaced atomically: a crash never
leaves half a file, and at no moment is a key readable by others.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from .endpoint import AccessKey, AuthMode
from .errors import ConfigError
from .files import replace_file
from .paths import config_dir

__all__ = ["DEFAULT_PROFILE", "Profile", "ProfileStore"]

DEFAULT_PROFILE = "default"

_FILE_NAME = "profiles.toml"


@dataclass(frozen=True)
class Profile:
    """One saved login."""

    name: str
    server: str
    access_key: AccessKey
    project: str | None = None
    auth: AuthMode = AuthMode.HEADER

    def to_toml(self) -> dict[str, Any]:
        """Return the profile as a TOML table, key included."""
        table: dict[str, Any] = {
            "server": self.server,
            "auth": self.auth.value,
            "access_key": self.access_key.reveal(),
        }
        if self.project:
            table["project"] = self.project
        return table

    @classmethod
    def from_toml(cls, name: str, table: Any, path: Path) -> Profile:
        """Read a profile from its TOML table; raise ConfigError if broken."""
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: profile {name!r} is not a table")
        try:
            return cls(
                name=name,
                server=str(table["server"]),
                access_key=AccessKey(str(table["access_key"])),
                project=str(table["project"]) if "project" in table else None,
                auth=AuthMode(table.get("auth", AuthMode.HEADER.value)),
            )
        except KeyError as exc:
            missing = exc.args[0]
            raise ConfigError(f"{path}: profile {name!r} has no {missing}") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: profile {name!r}: {exc}") from None


class ProfileStore:
    """The profiles file: read, add, remove."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / _FILE_NAME

    def load(self) -> dict[str, Profile]:
        """Return every saved profile by name (none if there is no file)."""
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read profiles from {self.path}: {exc}") from exc
        profiles = data.get("profiles", {})
        if not isinstance(profiles, dict):
            raise ConfigError(f"{self.path}: 'profiles' is not a table")
        return {
            name: Profile.from_toml(name, table, self.path)
            for name, table in profiles.items()
        }

    def get(self, name: str) -> Profile | None:
        """Return the profile called ``name``, if saved."""
        return self.load().get(name)

    def save(self, profile: Profile) -> None:
        """Add or replace ``profile``."""
        profiles = self.load()
        profiles[profile.name] = profile
        self._write(profiles)

    def remove(self, name: str) -> bool:
        """Remove the profile called ``name``; tell whether it existed."""
        profiles = self.load()
        if profiles.pop(name, None) is None:
            return False
        self._write(profiles)
        return True

    def _write(self, profiles: dict[str, Profile]) -> None:
        """Replace the file atomically, readable by its owner alone."""
        document = {
            "profiles": {name: p.to_toml() for name, p in sorted(profiles.items())}
        }
        text = (
            "# wsbridge saved logins; written by 'wsbridge login'.\n"
            "# Holds access keys: keep this file private (mode 0600).\n\n"
            + tomli_w.dumps(document)
        )
        replace_file(self.path, text)

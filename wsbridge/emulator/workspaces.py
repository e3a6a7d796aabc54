"""The workspaces the emulator serves and the state each one is in.

For now every workspace stays ``Running`` and the lifecycle actions only
report what they would do. The state lives in one object per workspace so
that richer behaviour (``Busy`` while starting, ``Stopped``, ``NotFound``
after delete, persistence in the state directory) changes this module only.
No I/O happens here: the server turns the messages into frames.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import UsageError

__all__ = [
    "EMULATOR_CONTEXT",
    "EMULATOR_PROVIDER",
    "Workspace",
    "WorkspaceState",
    "Workspaces",
    "check_workspace_name",
]

# DevPod's rule for workspace ids: lowercase letters, digits and dashes, no
# dash at either end, at most 48 characters.
_WORKSPACE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?")

# What the status result names as the workspace's DevPod context and provider.
EMULATOR_CONTEXT = "default"
EMULATOR_PROVIDER = "emulator"


class WorkspaceState(enum.Enum):
    """The states ``get-status`` can report (PROTOCOL.md)."""

    RUNNING = "Running"
    BUSY = "Busy"
    STOPPED = "Stopped"
    NOT_FOUND = "NotFound"


@dataclass
class Workspace:
    """One emulated workspace and its current state."""

    name: str
    state: WorkspaceState = WorkspaceState.RUNNING

    def status(self) -> dict[str, str]:
        """Return the object the ``get-status`` action prints."""
        return {
            "id": self.name,
            "context": EMULATOR_CONTEXT,
            "provider": EMULATOR_PROVIDER,
            "state": self.state.value,
        }

    def up(self) -> list[str]:
        """Start the workspace and return the log messages to stream."""
        return [
            f"Starting workspace {self.name}",
            f"Workspace {self.name} is {self.state.value.lower()}",
        ]

    def stop(self) -> list[str]:
        """Stop the workspace and return the log messages to stream."""
        return [
            f"Stopping workspace {self.name}",
            f"Workspace {self.name} is emulated and keeps running",
        ]

    def delete(self) -> list[str]:
        """Delete the workspace and return the log messages to stream."""
        return [
            f"Deleting workspace {self.name}",
            f"Workspace {self.name} is emulated and stays available",
        ]


def check_workspace_name(name: str) -> str:
    """Return ``name`` if DevPod would accept it as a workspace id.

    Raises:
        UsageError: the name has characters or a length DevPod refuses.
    """
    if not _WORKSPACE_NAME.fullmatch(name):
        raise UsageError(
            f"invalid workspace name {name!r}: use lowercase letters, digits "
            "and dashes (at most 48, not starting or ending with a dash)"
        )
    return name


class Workspaces:
    """The set of workspaces one emulator serves, looked up by name."""

    def __init__(self, names: Iterable[str]) -> None:
        """Create one running workspace per name.

        Raises:
            UsageError: a name is invalid or repeated, or there is none.
        """
        self._by_name: dict[str, Workspace] = {}
        for name in names:
            check_workspace_name(name)
            if name in self._by_name:
                raise UsageError(f"workspace {name!r} is named twice")
            self._by_name[name] = Workspace(name)
        if not self._by_name:
            raise UsageError("the emulator needs at least one workspace")

    def get(self, name: str) -> Workspace | None:
        """Return the workspace called ``name``, or None if there is none."""
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Workspace]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

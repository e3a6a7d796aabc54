"""The workspaces the emulator serves, the state each is in, and their file.

Every workspace the emulator has heard of has a record: its name, its state
(PROTOCOL.md's ``Running``, ``Busy``, ``Stopped`` or ``NotFound``) and a
lock that lets one lifecycle action at a time change it. A deleted
workspace keeps its record in state ``NotFound``; a name without a record
has never existed. The records live in ``workspaces.json`` in the state
directory, rewritten atomically on every change::

    {"version": 1, "workspaces": {"demo": "Running", "old": "NotFound"}}

A workspace saved as ``Busy`` was in the middle of an action when the
emulator stopped; it comes back ``Stopped``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, UsageError
from ..files import replace_file

__all__ = [
    "EMULATOR_CONTEXT",
    "EMULATOR_PROVIDER",
    "WORKSPACES_FILE",
    "Workspace",
    "WorkspaceState",
    "Workspaces",
    "check_workspace_name",
    "is_valid_workspace_name",
    "status_object",
]

logger = logging.getLogger("wsbridge.emulator")

# DevPod's rule for workspace ids: lowercase letters, digits and dashes, no
# dash at either end, at most 48 characters.
_WORKSPACE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?")

# What the status result names as the workspace's DevPod context and provider.
EMULATOR_CONTEXT = "default"
EMULATOR_PROVIDER = "emulator"

WORKSPACES_FILE = "workspaces.json"

# Bumped when the file's layout changes incompatibly.
_FILE_VERSION = 1


class WorkspaceState(enum.Enum):
    """The states ``get-status`` can report (PROTOCOL.md)."""

    RUNNING = "Running"
    BUSY = "Busy"
    STOPPED = "Stopped"
    NOT_FOUND = "NotFound"


@dataclass(eq=False)
class Workspace:
    """One workspace record: its state and the lock its actions take."""

    name: str
    state: WorkspaceState
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def exists(self) -> bool:
        """Tell whether the workspace is there (created and not deleted)."""
        return self.state is not WorkspaceState.NOT_FOUND


def status_object(name: str, state: WorkspaceState) -> dict[str, str]:
    """Return the object the status action prints for ``name``."""
    return {
        "id": name,
        "context": EMULATOR_CONTEXT,
        "provider": EMULATOR_PROVIDER,
        "state": state.value,
    }


def is_valid_workspace_name(name: str) -> bool:
    """Tell whether DevPod would accept ``name`` as a workspace id."""
    return _WORKSPACE_NAME.fullmatch(name) is not None


def check_workspace_name(name: str) -> str:
    """Return ``name`` if DevPod would accept it as a workspace id.

    Raises:
        UsageError: the name has characters or a length DevPod refuses.
    """
    if not is_valid_workspace_name(name):
        raise UsageError(
            f"invalid workspace name {name!r}: use lowercase letters, digits "
            "and dashes (at most 48, not starting or ending with a dash)"
        )
    return name


class Workspaces:
    """Every workspace record of one emulator, saved on each change."""

    def __init__(self, path: Path, states: dict[str, WorkspaceState]) -> None:
        """Hold ``states`` and save changes to ``path``; see ``load``."""
        self._path = path
        self._by_name = {
            name: Workspace(name, state) for name, state in sorted(states.items())
        }

    @classmethod
    def load(cls, path: Path, initial: Iterable[str]) -> Workspaces:
        """Read the records in ``path`` and add the ``initial`` names it lacks.

        A name in ``initial`` without a record starts ``Running``; a name
        with one keeps its saved state, even ``NotFound``, so that states
        survive a restart with the same command line. The file is written
        back at once, which also proves it is writable.

        Raises:
            UsageError: an initial name is invalid or repeated.
            ConfigError: the file exists but cannot be read or understood,
                or cannot be written.
        """
        names: list[str] = []
        for name in initial:
            if name in names:
                raise UsageError(f"workspace {name!r} is named twice")
            names.append(check_workspace_name(name))

        states = _read_states(path) if path.exists() else {}
        for name, state in states.items():
            if state is WorkspaceState.BUSY:
                logger.info("workspace %s was busy when the emulator stopped", name)
                states[name] = WorkspaceState.STOPPED
        for name in names:
            states.setdefault(name, WorkspaceState.RUNNING)

        workspaces = cls(path, states)
        workspaces.save()
        return workspaces

    def get(self, name: str) -> Workspace | None:
        """Return the record of ``name``, or None if it never existed."""
        return self._by_name.get(name)

    def state_of(self, name: str) -> WorkspaceState:
        """Return the state of ``name``; ``NotFound`` if it has no record."""
        workspace = self._by_name.get(name)
        return WorkspaceState.NOT_FOUND if workspace is None else workspace.state

    def record(self, name: str) -> Workspace:
        """Return the record of ``name``, making a ``NotFound`` one if needed.

        The new record is saved with its first state change, so a name that
        is only looked at leaves no trace in the file.
        """
        check_workspace_name(name)
        workspace = self._by_name.get(name)
        if workspace is None:
            workspace = Workspace(name, WorkspaceState.NOT_FOUND)
            self._by_name[name] = workspace
        return workspace

    def set_state(self, workspace: Workspace, state: WorkspaceState) -> None:
        """Move ``workspace`` to ``state`` and save every record.

        Raises:
            ConfigError: the file cannot be written.
        """
        logger.info(
            "workspace %s: %s -> %s",
            workspace.name,
            workspace.state.value,
            state.value,
        )
        workspace.state = state
        self.save()

    def save(self) -> None:
        """Replace the file with the current records.

        Raises:
            ConfigError: the file cannot be written.
        """
        document = {
            "version": _FILE_VERSION,
            "workspaces": {
                name: workspace.state.value
                for name, workspace in sorted(self._by_name.items())
            },
        }
        replace_file(self._path, json.dumps(document, indent=2) + "\n")

    def existing(self) -> list[Workspace]:
        """Return the workspaces that exist now, by name."""
        return [
            workspace
            for _, workspace in sorted(self._by_name.items())
            if workspace.exists
        ]

    def __iter__(self) -> Iterator[Workspace]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)


def _read_states(path: Path) -> dict[str, WorkspaceState]:
    """Read the saved states from ``path``.

    Raises:
        ConfigError: the file cannot be read or does not hold valid records.
    """
    advice = "fix or delete it to start afresh"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the workspace states in {path}: {exc}; {advice}"
        ) from exc

    if not isinstance(document, dict) or document.get("version") != _FILE_VERSION:
        raise ConfigError(
            f"{path} is not a version {_FILE_VERSION} workspace file; {advice}"
        )
    saved = document.get("workspaces")
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} has no workspaces object; {advice}")

    states: dict[str, WorkspaceState] = {}
    for name, value in saved.items():
        if not is_valid_workspace_name(name):
            raise ConfigError(f"{path} names an invalid workspace {name!r}; {advice}")
        try:
            states[name] = WorkspaceState(value)
        except ValueError:
            raise ConfigError(
                f"{path} gives workspace {name!r} an unknown state {value!r}; {advice}"
            ) from None
    return states

"""Command lines for ``wsbridge shell`` and ``wsbridge exec`` against the emulator."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .emulator import DEFAULT_WORKSPACE, Emulator


def remote_argv(
    subcommand: str,
    emulator: Emulator,
    command: Sequence[str] = (),
    *,
    options: Sequence[str | Path] = (),
) -> list[str]:
    """Return the argv of ``wsbridge shell|exec`` for the emulator's demo workspace."""
    argv = [sys.executable, "-m", "wsbridge", subcommand]
    argv += ["--server", emulator.url]
    argv += ["--access-key-file", str(emulator.access_key_file)]
    argv += [str(option) for option in options]
    argv.append(DEFAULT_WORKSPACE)
    if command:
        argv += ["--", *command]
    return argv

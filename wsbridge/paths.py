"""Where wsbridge keeps its files, and the emulator's well-known address.

Kept apart from the emulator package so that commands which only need to
know where the emulator lives do not import its server and SSH code.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

__all__ = ["EMULATOR_PORT", "config_dir", "emulator_state_dir", "state_dir"]

# The emulator's default port: unassigned by IANA, and far from the usual
# development ports so that it rarely collides with something else.
EMULATOR_PORT = 17022

_APP = "wsbridge"


def config_dir() -> Path:
    """Return the user's wsbridge configuration directory."""
    return platformdirs.user_config_path(_APP)


def state_dir() -> Path:
    """Return the user's wsbridge state directory."""
    return platformdirs.user_state_path(_APP)


def emulator_state_dir() -> Path:
    """Return the default state directory of the local emulator."""
    return state_dir() / "emulator"

"""Where wsbridge keeps its files, and the emulator's well-known address.

Kept apart from the emulator package so that commands which only need to
know where the emulator lives do not import its server and SSH code.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

__all__ = [
    "EMULATOR_PORT",
    "EMULATOR_URL",
    "config_dir",
    "emulator_client_key",
    "emulator_state_dir",
    "state_dir",
]

# The emulator's default port: unassigned by IANA, and far from the usual
# development ports so that it rarely collides with something else.
EMULATOR_PORT = 17022

# Where commands go when no server is configured anywhere.
EMULATOR_URL = f"ws://127.0.0.1:{EMULATOR_PORT}"

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


def emulator_client_key(server: str) -> Path | None:
    """Return the local emulator's client key if ``server`` is that emulator.

    The emulator authorises a key of its own; offering it makes the
    out-of-the-box demo work without touching ~/.ssh.
    """
    key = emulator_state_dir() / "client_key"
    return key if server == EMULATOR_URL and key.exists() else None

"""A local stand-in for the DevPod.Pro platform, for trying and testing wsbridge.

It serves the workspace command protocol of PROTOCOL.md: lifecycle actions
that move each workspace between the platform's states (kept in the state
directory across restarts) while streaming DevPod-style log lines, a status
action under both of its names, the workspace list, and an ``ssh`` action
backed by an embedded SSH server (or a splice to a real one). Typical use
from the CLI::

    settings = EmulatorSettings(state_dir=default_state_dir(), port=0)
    await run_emulator(settings, on_ready=lambda url: print(url))
"""

from .server import (
    DEFAULT_PORT,
    LISTENING_PREFIX,
    EmulatorSettings,
    default_state_dir,
    run_emulator,
    start_detached,
    stop_detached,
)

__all__ = [
    "DEFAULT_PORT",
    "LISTENING_PREFIX",
    "EmulatorSettings",
    "default_state_dir",
    "run_emulator",
    "start_detached",
    "stop_detached",
]

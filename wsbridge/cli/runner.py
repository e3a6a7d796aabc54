"""Run a command's coroutine, and turn errors into exit codes.

A stop signal (Ctrl-C, SIGTERM, SIGHUP) cancels the running coroutine
instead of killing the process, so every ``finally`` runs: websockets
close with 1000 and the terminal gets its flags back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = [
    "EXIT_UNREPRESENTABLE",
    "configure_logging",
    "exit_status",
    "reopen_closed_standard_streams",
    "run_async",
    "run_value",
]

# Remote exit codes outside what a process can return (negative ones, as
# the platform sends for a command killed without a status, or above 255)
# become this, so that a failure never reads as success.
EXIT_UNREPRESENTABLE = 1

# Signals that end a running command cleanly, closing its websocket.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_status(remote_code: int) -> int:
    """Map a remote exit code to one this process can exit with."""
    if 0 <= remote_code <= 255:
        return remote_code
    return EXIT_UNREPRESENTABLE


def run_value(coroutine: Coroutine[Any, Any, str]) -> str:
    """Run a coroutine that returns text, with Ctrl-C handled as usual."""
    result: list[str] = []

    async def keep() -> int:
        result.append(await coroutine)
        return 0

    status = run_async(keep())
    if not result:
        raise SystemExit(status)
    return result[0]


def run_async(coroutine: Coroutine[Any, Any, int | None]) -> int:
    """Run ``coroutine``; a stop signal cancels it and exits 128+signal.

    Cancelling (rather than dying on the signal) lets every ``finally`` run,
    so websockets close with 1000 and the terminal gets its flags back.
    """
    received: list[int] = []

    async def supervise() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await coroutine or 0
        except asyncio.CancelledError:
            if received:
                return 128 + received[0]
            raise
        finally:
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    return asyncio.run(supervise())


def configure_logging(verbosity: int) -> None:
    """Send wsbridge's log to stderr at the level -v asks for."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("wsbridge: %(message)s"))
    root = logging.getLogger("wsbridge")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # The wire logger would show the handshake headers, and with them the
    # access key: it never goes below INFO.
    logging.getLogger("wsbridge.wire").setLevel(max(level, logging.INFO))
    logging.getLogger("asyncssh").setLevel(max(level, logging.WARNING))


def reopen_closed_standard_streams() -> None:
    """Put /dev/null on whichever of fds 0, 1 and 2 a parent left closed.

    Otherwise the next socket or file opened would take that number and be
    mistaken for stdin, stdout or stderr (``wsbridge exec ... <&-`` would
    read its own websocket), and Python leaves ``sys.stdin`` and friends
    as None.
    """
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        # The stream lives as long as the process, as sys.stdin and co. do.
        stream = open(fd, mode, encoding="utf-8", closefd=False)  # noqa: SIM115
        setattr(sys, name, stream)

"""The ``wsbridge`` command line.

It parses arguments (``parser``), hands them to a command handler
(``commands``), and maps exceptions to exit codes and one-line messages
(``runner``). It holds no logic of its own; every command is a library
call.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from ..errors import EXIT_INTERRUPTED, WsbridgeError
from .parser import build_parser
from .runner import configure_logging, exit_status, reopen_closed_standard_streams

__all__ = ["build_parser", "exit_status", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    reopen_closed_standard_streams()
    try:
        args = build_parser().parse_args(argv)
        configure_logging(args.verbose)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except WsbridgeError as exc:
        print(f"wsbridge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Our own stdout went away (``wsbridge ... | head``): exit as a
        # process killed by SIGPIPE would.
        return 128 + signal.SIGPIPE

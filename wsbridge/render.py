"""Show the output of lifecycle actions to people and to programs.

The platform streams JSON log lines on stdout and stderr. ``LogView``
offers one channel sink per stream, reassembles lines across frames and
shows them in one of three modes:

- ``TERMINAL``: each record with its level, coloured, and a live progress
  line (prompt_toolkit) with the current step and the elapsed time, erased
  when the action ends. Debug and trace records appear with ``-v``.
- ``PLAIN``: the same records as plain text, with no colour and with every
  control character escaped, for logs and pipes.
- ``JSON``: the received lines, unchanged, one per line on stdout.

Text from the server is escaped before it reaches a terminal, so a hostile
or broken log line cannot move the cursor or retitle the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TextIO

from .loglines import LEVELS, LineAssembler, LogRecord, decode_line, parse_line

# prompt_toolkit takes a quarter of a second to import, which every ssh
# connection through the proxy would pay: it is imported where it is used.
if TYPE_CHECKING:
    from prompt_toolkit.application import Application
    from prompt_toolkit.formatted_text import StyleAndTextTuples

__all__ = ["LogView", "OutputMode", "escape_controls"]

# How often the progress line redraws its clock and spinner.
PROGRESS_REFRESH = 0.2

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

_LEVEL_STYLES = {
    "trace": "ansibrightblack",
    "debug": "ansibrightblack",
    "info": "ansigreen",
    "warning": "ansiyellow",
    "error": "ansired",
    "fatal": "ansired bold",
    "panic": "ansired bold",
}

# Records below this level are shown only with -v.
_QUIET_BELOW = LEVELS.index("info")

# Every C0 and C1 control character but tab, and DEL, shown as \xNN.
_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]
    if code != 0x09
}


def escape_controls(text: str) -> str:
    """Replace control characters with visible ``\\xNN`` escapes."""
    return text.translate(_CONTROLS)


class OutputMode(enum.Enum):
    """How a ``LogView`` shows what it receives."""

    TERMINAL = "terminal"
    PLAIN = "plain"
    JSON = "json"

    @classmethod
    def for_stream(cls, stream: TextIO, json_output: bool = False) -> OutputMode:
        """Pick JSON if asked, else terminal or plain by ``stream``."""
        if json_output:
            return cls.JSON
        return cls.TERMINAL if _is_terminal(stream) else cls.PLAIN


def _is_terminal(stream: TextIO) -> bool:
    """Tell whether ``stream`` is a terminal, tolerating closed streams."""
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False


class LineSink:
    """A channel sink that cuts one server stream into lines for a view."""

    def __init__(self, view: LogView, target: TextIO) -> None:
        self._view = view
        self._target = target
        self._assembler = LineAssembler()
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        """Take bytes; complete lines wait for ``drain``."""
        self._pending.extend(self._assembler.feed_raw(data))

    async def drain(self) -> None:
        """Show the lines completed so far."""
        lines, self._pending = self._pending, []
        if lines:
            await self._view.show_raw(self._target, lines)

    def can_write_eof(self) -> bool:
        """Say yes: the end of the stream flushes a last partial line."""
        return True

    def write_eof(self) -> None:
        """Keep the stream's last line, which had no newline."""
        self._pending.extend(self._assembler.finish_raw())

    async def close(self) -> None:
        """Show anything still pending, as at end of stream."""
        self.write_eof()
        await self.drain()


class LogView:
    """Show a lifecycle action's output in one ``OutputMode``."""

    def __init__(
        self,
        mode: OutputMode,
        *,
        verbose: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        title: str = "",
    ) -> None:
        self.mode = mode
        self._verbose = verbose
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        self._title = title
        self._step = title
        self._started = time.monotonic()
        self._app: Application[None] | None = None
        self.sinks: list[LineSink] = []

    def sink(self, target: TextIO) -> LineSink:
        """Return a channel sink whose lines are shown on ``target``."""
        line_sink = LineSink(self, target)
        self.sinks.append(line_sink)
        return line_sink

    @property
    def stdout(self) -> TextIO:
        """Return where the server's stdout is shown."""
        return self._stdout

    @property
    def stderr(self) -> TextIO:
        """Return where the server's stderr and the progress line go."""
        return self._stderr

    # Showing lines.

    async def show_raw(self, target: TextIO, lines: list[bytes]) -> None:
        """Show complete lines, as received, for ``target``."""
        if self.mode is OutputMode.JSON:
            # Machines get exactly the bytes the server sent, on stdout.
            self._stdout.flush()
            self._stdout.buffer.write(b"".join(line + b"\n" for line in lines))
            self._stdout.buffer.flush()
            return
        await self.show(target, [decode_line(line) for line in lines])

    async def show(self, target: TextIO, lines: list[str]) -> None:
        """Show complete lines of text for ``target``."""
        printers = [
            printer
            for printer in (self._printer(target, line) for line in lines)
            if printer is not None
        ]
        if not printers:
            return

        def print_all() -> None:
            for printer in printers:
                printer()

        if self._app is not None and self._app.is_running:
            from prompt_toolkit.application import run_in_terminal

            # Hide the progress line, print above it, then draw it again.
            await run_in_terminal(print_all, in_executor=False)
        else:
            print_all()

    async def note(self, message: str) -> None:
        """Show a message of wsbridge's own, such as a back-off notice."""
        await self.show(self._stderr, [message])

    def _printer(self, target: TextIO, line: str) -> Callable[[], None] | None:
        """Return a function that prints ``line``, or None to hide it."""
        record = parse_line(line)
        if record is not None:
            if record.severity < _QUIET_BELOW and not self._verbose:
                return None
            if record.severity == _QUIET_BELOW:
                self._step = escape_controls(record.message)
        if self.mode is OutputMode.TERMINAL and _is_terminal(target):
            from prompt_toolkit import print_formatted_text
            from prompt_toolkit.formatted_text import FormattedText

            fragments = _styled(record, line)
            return lambda: print_formatted_text(
                FormattedText(fragments), file=target, flush=True
            )
        text = _plain(record, line)
        return lambda: print(text, file=target, flush=True)

    # The progress line.

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Wrap an action: progress line meanwhile, last lines shown after."""
        try:
            if self.mode is OutputMode.TERMINAL and _is_terminal(self._stderr):
                async with self._progress_line():
                    yield
            else:
                yield
        finally:
            for line_sink in self.sinks:
                await line_sink.close()

    @contextlib.asynccontextmanager
    async def _progress_line(self) -> AsyncIterator[None]:
        """Draw the live progress line on stderr while the body runs."""
        from prompt_toolkit.application import Application
        from prompt_toolkit.input import create_pipe_input
        from prompt_toolkit.layout import Layout, Window
        from prompt_toolkit.layout.controls import FormattedTextControl
        from prompt_toolkit.output import create_output
        from prompt_toolkit.output.vt100 import Vt100_Output

        output = create_output(stdout=self._stderr)
        if isinstance(output, Vt100_Output):
            # A cursor-position request would be answered on the terminal's
            # input, which belongs to someone else (the ssh client, or the
            # shell once we exit), and show up there as garbage.
            output.enable_cpr = False
        # A pipe that nothing writes to: the application must not read the
        # terminal, so the terminal stays cooked and Ctrl-C stays a signal.
        with create_pipe_input() as no_keys:
            self._app = Application(
                layout=Layout(
                    Window(FormattedTextControl(self._progress_text), height=1)
                ),
                input=no_keys,
                output=output,
                full_screen=False,
                erase_when_done=True,
                refresh_interval=PROGRESS_REFRESH,
            )
            # The application must not take over SIGINT (it would swallow
            # Ctrl-C as a key press) nor the loop's exception handler (it
            # would wait for Enter on a terminal that is not its own).
            running = asyncio.ensure_future(
                self._app.run_async(handle_sigint=False, set_exception_handler=False)
            )
            try:
                yield
            finally:
                # Lines still owed are printed above the line before it goes.
                for line_sink in self.sinks:
                    await line_sink.close()
                if self._app.is_running:
                    self._app.exit()
                await running
                self._app = None

    def _progress_text(self) -> StyleAndTextTuples:
        """Build the progress line: spinner, current step, elapsed time."""
        elapsed = time.monotonic() - self._started
        spinner = _SPINNER[int(elapsed / PROGRESS_REFRESH) % len(_SPINNER)]
        return [
            ("ansicyan", f"{spinner} "),
            ("", self._step[:200]),
            ("ansibrightblack", f"  {elapsed:.0f}s"),
        ]


def _styled(record: LogRecord | None, line: str) -> StyleAndTextTuples:
    """Format a line for a terminal: coloured level, escaped text."""
    if record is None:
        return [("", escape_controls(line))]
    style = _LEVEL_STYLES.get(record.level, "")
    return [(style, f"{record.level:<7} "), ("", escape_controls(record.message))]


def _plain(record: LogRecord | None, line: str) -> str:
    """Format a line as plain text with every control character escaped."""
    if record is None:
        return escape_controls(line)
    return f"{record.level:<7} {escape_controls(record.message)}"

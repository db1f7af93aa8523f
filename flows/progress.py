"""Progress of long work for a person at a terminal, on stderr (stdout stays the machine-readable
lines): a bar redrawn in place where stderr is a terminal; elsewhere (a file, a pipe, a CI log) a
plain line at most every ``every`` seconds, so a log shows the work moving without a flood."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 30


class TerminalProgress:
    """``update(done, total)`` as work advances; ``message(text)`` for a line of its own (a log line),
    printed above the bar. Use it as a context manager: an interrupted bar still ends its line."""

    def __init__(self, what: str, stream: TextIO | None = None, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.stream, self.every, self.clock = what, stream or sys.stderr, every, clock
        self.tty = self.stream.isatty()
        self.started = clock()
        self.printed_at: float | None = None  # when the last plain line went out
        self.line = ""  # the bar drawn on the terminal's current line, if any

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc) -> None:
        self._end_line()

    def update(self, done: int, total: int) -> None:
        now = self.clock()
        if self.tty:
            self.line = self._bar(done, total, now)
            self.stream.write("\r" + self.line + "\x1b[K")
            if done >= total:  # finished: later messages start on a line of their own
                self._end_line()
        elif self.printed_at is None or done >= total or now - self.printed_at >= self.every:
            self.printed_at = now
            self.stream.write(self._plain(done, total, now) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.line:
            self.stream.write("\r\x1b[K" + text + "\n" + self.line)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self.line:
            self.stream.write("\n")
            self.stream.flush()
            self.line = ""

    def _bar(self, done: int, total: int, now: float) -> str:
        share = done / total if total else 1.0
        filled = round(BAR_WIDTH * share)
        return (f"{self.what} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} "
                f"{share:4.0%}{self._pace(done, total, now)}")

    def _plain(self, done: int, total: int, now: float) -> str:
        return f"{self.what}: {done} of {total} ({done / total if total else 1.0:.0%}){self._pace(done, total, now)}"

    def _pace(self, done: int, total: int, now: float) -> str:
        """Elapsed seconds, and the time left at the pace so far once there is one."""
        elapsed = now - self.started
        if done <= 0 or done >= total:
            return f", {elapsed:.0f} s"
        return f", {elapsed:.0f} s, about {elapsed * (total - done) / done:.0f} s left"

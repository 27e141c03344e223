"""The one channel for what a person reads, kept apart from logging.

Steps never print: they take a Reporter and call it.  The CLI hands them a
TerminalReporter (progress on a terminal, plain prefixed lines under dpkg);
tests hand them a RecordingReporter and read what a person would see.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Protocol, TextIO

log = logging.getLogger("ivle_maint")

PREFIX = "ivle-maint: "


class Reporter(Protocol):
    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def progress(self, label: str, done: int, total: int | None = None) -> None: ...


class TerminalReporter:
    """Plain prefixed lines; on a terminal, progress redraws one line."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        if tty is None:
            # apt runs dpkg on a pseudo-terminal: under a maintainer script
            # nobody watches a redrawn progress line, the log keeps it.
            tty = self.stream.isatty() and "DPKG_MAINTSCRIPT_NAME" not in os.environ
        self.tty = tty
        self._progress_shown = False
        self._last_draw = 0.0

    def _end_progress(self) -> None:
        if self._progress_shown:
            self.stream.write("\n")
            self._progress_shown = False

    def info(self, message: str) -> None:
        self._end_progress()
        log.info(message)
        self.stream.write(f"{PREFIX}{message}\n")
        self.stream.flush()

    def warn(self, message: str) -> None:
        self._end_progress()
        log.warning(message)
        self.stream.write(f"{PREFIX}warning: {message}\n")
        self.stream.flush()

    def progress(self, label: str, done: int, total: int | None = None) -> None:
        # Under dpkg there is no terminal: progress goes to the log only.
        log.debug("%s: %s/%s", label, done, total)
        if not self.tty:
            return
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        count = f"{done}/{total}" if total is not None else str(done)
        self.stream.write(f"\r{PREFIX}{label}: {count}\x1b[K")
        self._progress_shown = True
        if final:
            self._end_progress()
        self.stream.flush()


class RecordingReporter:
    """Keeps every message, for tests and for summaries."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.progress_calls: list[tuple[str, int, int | None]] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(f"warning: {message}")

    def progress(self, label: str, done: int, total: int | None = None) -> None:
        self.progress_calls.append((label, done, total))

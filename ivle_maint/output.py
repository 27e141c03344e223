"""The one channel for what a person reads, kept apart from logging.

Steps never print: they take a Reporter and call it.  The CLI hands them a
TerminalReporter (progress on a terminal, plain prefixed lines under dpkg);
tests hand them a RecordingReporter and read what a person would see.
Steps that overlap report from several threads: each message is written
whole (TerminalReporter's lock), never interleaved with another.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Protocol, TextIO

from .gates.text import block, shown

log = logging.getLogger("ivle_maint")

PREFIX = "ivle-maint: "


def silence(stream: TextIO) -> None:
    """Point a dead stream's descriptor at /dev/null.

    Later writes, the interpreter's last flush at exit included, then
    succeed instead of failing again (which would change the exit status).
    """
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


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
        self.broken = False
        self._lock = threading.RLock()  # one message at a time, whole

    def _write(self, text: str) -> None:
        """Write and flush; a reader that went away never stops the work.

        A killed `| tee`, a closed terminal or a full disk under a redirect
        must not stop a step or an undo half-way: the run's log keeps
        every line, so the text is dropped and the run goes on.
        """
        if self.broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # EPIPE, EIO; ValueError: closed file
            self.broken = True
            silence(self.stream)
            log.warning("output stream failed (%s); messages go to the log only", exc)

    def _end_progress(self) -> None:
        if self._progress_shown:
            self._write("\n")
            self._progress_shown = False

    # Messages carry text from outside (command lines, paths, SQL errors):
    # gates.text escapes it here, the one way to the terminal.
    def info(self, message: str) -> None:
        log.info(message)
        with self._lock:
            self._end_progress()
            self._write(block(message, PREFIX) + "\n")

    def warn(self, message: str) -> None:
        log.warning(message)
        with self._lock:
            self._end_progress()
            self._write(block(message, f"{PREFIX}warning: ") + "\n")

    def progress(self, label: str, done: int, total: int | None = None) -> None:
        # Under dpkg there is no terminal: progress goes to the log only.
        log.debug("%s: %s/%s", label, done, total)
        if not self.tty:
            return
        with self._lock:
            self._draw(label, done, total)

    def _draw(self, label: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        count = f"{done}/{total}" if total is not None else str(done)
        self._write(f"\r{PREFIX}{shown(label)}: {count}\x1b[K")
        self._progress_shown = True
        if final:
            self._end_progress()


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

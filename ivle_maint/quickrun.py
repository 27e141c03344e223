"""Commands run to their end by the kernel's word: system.run while steps run.

system.run (the sh library) returns about 0.1 s after its command ended
(its threads look every 0.1 s): three such commands per service action
(status, action, status) were most of the time ivle-maint spent on one.
This runs a command as system.run does (the gate's program and
environment, its own session, dead with ivle-maint, recorded for the
signal handlers, bounded, each output line handed on as it comes) and
returns when the kernel says it ended: its pidfd and its output pipe are
polled, nothing else.  Output a daemon keeps
open after the command exited (an init script's child) is read for at
most OUTPUT_GRACE seconds more, as sh does.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from . import children
from .errors import MaintError
from .gates import environment, trusted

OUTPUT_GRACE = 2.0
TAIL_LINES = 40  # the output lines kept for a failure's message


@dataclass(frozen=True)
class Completed:
    """The outcome of one command: status, full stdout if kept, output tail."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

# The most output kept (the last bytes): a command that floods its output
# costs ivle-maint no more memory than this, however long it runs.
OUTPUT_KEPT = 1024 * 1024


def run(argv: Sequence[str], *, timeout: float | None,
        on_line: Callable[[str], None] | None = None, keep_stdout: bool = False,
        env: Mapping[str, str] | None = None, cwd: str | None = None) -> Completed:
    """Run argv; stdout and stderr together, each line to ON_LINE as it comes;
    never raise on its status (system.run's contract; ENV may only add what
    ivle-maint sets itself, gates/environment.child_env)."""
    program = trusted.require_program(argv[0])
    mark = children.new_mark()  # proves a killed run's leftovers (gates/processes.py)
    full_env = environment.child_env(os.environ, {**(env or {}), environment.MARK: mark},
                                     home=environment.home_of(os.geteuid()))
    with children.spawning():  # one thread forks at a time, as in system.run
        proc = subprocess.Popen(  # the gate checked the program
            [program, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True,
            preexec_fn=children.preexec_for_child())  # noqa: PLW1509 (as system.run's)
    note = children.record(proc.pid, argv, mark)
    lines = _Lines(on_line, keep_stdout)
    finished = False
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not _collect(proc, deadline, lines.feed):
            raise MaintError(f"{argv[0]} did not finish within {timeout:g}s")
        finished = True
    finally:
        if not finished:  # timed out or interrupted: it must not run on without us
            children.end_now(proc.pid)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        children.forget(note)
    lines.end()
    return Completed(tuple(argv), proc.returncode, "\n".join(lines.kept),
                     tuple(lines.tail))


class _Lines:
    """Output cut into lines as it arrives: each to ON_LINE, the last
    TAIL_LINES kept, and with KEEP the whole output's last OUTPUT_KEPT bytes."""

    def __init__(self, on_line: Callable[[str], None] | None, keep: bool) -> None:
        self.on_line, self.keep = on_line, keep
        self.partial = bytearray()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.kept: deque[str] = deque()
        self.kept_bytes = 0

    def feed(self, chunk: bytes) -> None:
        self.partial += chunk
        *complete, rest = self.partial.split(b"\n")
        self.partial = bytearray(rest[-OUTPUT_KEPT:])  # a line without end is bounded too
        for raw in complete:
            self._line(raw.decode("utf-8", "replace"))

    def end(self) -> None:
        if self.partial:
            self._line(self.partial.decode("utf-8", "replace"))
            self.partial.clear()

    def _line(self, text: str) -> None:
        self.tail.append(text)
        if self.keep:
            self.kept.append(text)
            self.kept_bytes += len(text) + 1
            while self.kept_bytes > OUTPUT_KEPT and len(self.kept) > 1:
                self.kept_bytes -= len(self.kept.popleft()) + 1
        if self.on_line is not None:
            self.on_line(text)


def _collect(proc: subprocess.Popen[bytes], deadline: float | None,
             feed: Callable[[bytes], None]) -> bool:
    """Feed the command's output until it has exited (False if DEADLINE passed first)."""
    assert proc.stdout is not None
    out, pidfd = proc.stdout.fileno(), os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(out, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    open_fds, exited = {out, pidfd}, 0.0
    try:
        while out in open_fds or not exited:
            limit = deadline if not exited else exited + OUTPUT_GRACE
            left = None if limit is None else limit - time.monotonic()
            if left is not None and left <= 0:
                return bool(exited)
            for fd, _event in poller.poll(None if left is None else left * 1000):
                chunk = os.read(fd, 65536) if fd == out else b""
                if chunk:
                    feed(chunk)
                if fd == pidfd:
                    exited = time.monotonic()
                if not chunk:  # end of output, or the exit
                    poller.unregister(fd)
                    open_fds.discard(fd)
        return True
    finally:
        os.close(pidfd)

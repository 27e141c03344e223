"""system.run for the commands inside the web server's outage, without its poll.

system.run (the sh library) returns about 0.1 s after its command ended
(its threads look every 0.1 s): three such commands per service action
(status, action, status) were most of the time ivle-maint spent on one.
This runs a command as system.run does (the gate's program and
environment, its own session, dead with ivle-maint, recorded for the
signal handlers, bounded) and returns when the kernel says it ended: its
pidfd and its output pipe are polled, nothing else.  Output a daemon keeps
open after the command exited (an init script's child) is read for at
most OUTPUT_GRACE seconds more, as sh does.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence

from . import children
from .errors import MaintError
from .gates import environment, trusted
from .system import TAIL_LINES, Completed

OUTPUT_GRACE = 2.0
# The most output kept (the last bytes): a command that floods its output
# costs ivle-maint no more memory than this, however long it runs.
OUTPUT_KEPT = 1024 * 1024


def run(argv: Sequence[str], *, timeout: float | None,
        on_line: Callable[[str], None] | None = None, keep_stdout: bool = False) -> Completed:
    """Run argv; stdout and stderr together; never raise on its status (as system.run)."""
    program = trusted.require_program(argv[0])
    env = environment.child_env(os.environ, None, home=environment.home_of(os.geteuid()))
    with children.spawning():  # one thread forks at a time, as in system.run
        proc = subprocess.Popen(  # the gate checked the program
            [program, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=children.preexec_for_child())  # noqa: PLW1509 (as system.run's)
    note = children.record(proc.pid, argv)
    finished = False
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        data = _collect(proc, deadline)
        if data is None:
            raise MaintError(f"{argv[0]} did not finish within {timeout:g}s")
        finished = True
    finally:
        if not finished:  # timed out or interrupted: it must not run on without us
            children.end_now(proc.pid)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        children.forget(note)
    lines = data.decode("utf-8", "replace").splitlines()
    if on_line is not None:
        for line in lines:
            on_line(line)
    return Completed(tuple(argv), proc.returncode, "\n".join(lines) if keep_stdout else "",
                     tuple(lines[-TAIL_LINES:]))


def _collect(proc: subprocess.Popen[bytes], deadline: float | None) -> bytes | None:
    """The command's output once it has exited (None if DEADLINE passed first)."""
    assert proc.stdout is not None
    out, pidfd = proc.stdout.fileno(), os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(out, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    data, open_fds, exited = bytearray(), {out, pidfd}, 0.0
    try:
        while out in open_fds or not exited:
            limit = deadline if not exited else exited + OUTPUT_GRACE
            left = None if limit is None else limit - time.monotonic()
            if left is not None and left <= 0:
                return bytes(data) if exited else None
            for fd, _event in poller.poll(None if left is None else left * 1000):
                chunk = os.read(fd, 65536) if fd == out else b""
                data += chunk
                if len(data) > OUTPUT_KEPT:
                    del data[:len(data) - OUTPUT_KEPT]
                if fd == pidfd:
                    exited = time.monotonic()
                if not chunk:  # end of output, or the exit
                    poller.unregister(fd)
                    open_fds.discard(fd)
        return bytes(data)
    finally:
        os.close(pidfd)

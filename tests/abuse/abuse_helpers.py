"""Helpers the fault-and-abuse cases share: reading ivle-maint's error and
resume lines, the uninterrupted upgrade a killed one is compared with,
killing a run at the right moment, and the live processes a kill may leave.

A plain module (not fixtures) so that a case imports what it uses; what the
integration tests share too (cli, set_setting, OLD_KEYS...) is in
tests/integration/upgrade_helpers.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from upgrade_helpers import final_state, postinst, preinst, unpack

ERROR_PREFIX = "ivle-maint: error:"
RESUME_PREFIX = "ivle-maint: resume with: "


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """ivle-maint's error lines; a traceback is never an answer."""
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    errors = error_lines(done)
    assert len(errors) == 1, done.stderr
    return errors[0]


def upgraded_state(node: Any) -> dict[str, Any]:
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 of NODE leaves."""
    assert preinst(node).returncode == 0
    unpack(node)
    assert postinst(node).returncode == 0
    return final_state(node)


def live_processes() -> Iterator[tuple[int, bytes, bytes]]:
    """(pid, cmdline, environ) of every process that is not a zombie; an
    environ that cannot be read is empty (the process may be gone)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        proc = Path("/proc", entry.name)
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_bytes().rsplit(b")", 1)[1]
        except OSError:
            continue
        if state.split()[0] == b"Z":
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            environ = b""
        yield int(entry.name), cmdline, environ


def resume_line(stderr: str) -> str:
    """The one command ivle-maint says to resume with."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith(RESUME_PREFIX)]
    assert len(lines) == 1, stderr
    return lines[0].removeprefix(RESUME_PREFIX)


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float,
              poll: float = 0.01) -> None:
    """SIGKILL PROC (a running ivle-maint) as soon as READY() holds; it must
    not end by itself before."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"ended before it was killed: {proc.communicate()}")
        assert time.monotonic() < deadline, f"not ready after {timeout} s"
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def wait_until_gone(pids: Callable[[], list[int]], timeout: float, message: str) -> None:
    """Until PIDS() is empty (what the kernel ends with a killed parent)."""
    deadline = time.monotonic() + timeout
    while pids():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)

"""Waiting on processes by the kernel's word (pidfds), not by polling a status.

A pidfd (pidfd_open(2)) becomes readable when its process exits, and a
signal sent through it can never reach a process that took a reused pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterable


def open_pidfd(pid: int) -> int | None:
    """A pidfd for PID, or None when it has exited (or the kernel has none)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def children(pid: int) -> list[int]:
    """The processes whose parent is PID (from /proc; ended ones skipped)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        if ppid == pid:
            found.append(int(entry))
    return found


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def wait_exit(pid: int, timeout: float) -> bool:
    """True once PID has exited (at once if it has), False after TIMEOUT seconds."""
    fd = open_pidfd(pid)
    if fd is None:
        return True
    try:
        return wait_fd(fd, timeout)
    finally:
        os.close(fd)


def wait_fd(pidfd: int, timeout: float) -> bool:
    """True once PIDFD's process has exited, False after TIMEOUT seconds."""
    return bool(select.select([pidfd], [], [], max(timeout, 0.0))[0])


def signal_and_drain(pid: int, signum: int, timeout: float, pidfd: int | None = None) -> bool:
    """Send SIGNUM to PID, then wait until PID exits or every child it had
    has exited, whichever comes first; False if TIMEOUT passed first.
    PIDFD: the caller's pidfd of PID (left open), else one is opened here.

    Apache's graceful-stop: the parent closes its listening sockets, each
    child finishes the request it serves and exits; the parent itself only
    looks once a second, so its children's exits are the earlier sign that
    every request in flight is done.  A child that is no request worker
    (mod_cgid's daemon) ends with the parent: then the parent's exit says it.
    """
    main = open_pidfd(pid) if pidfd is None else os.dup(pidfd)
    if main is None:
        return True
    # Before the signal (a child may end and be reaped at once) and after it
    # (one forked meanwhile); a graceful stop forks none after that.
    before = set(children(pid))
    kids = pidfds(before)
    try:
        try:
            signal.pidfd_send_signal(main, signum)
        except ProcessLookupError:
            # It ended by itself since the caller judged it (a crash, an
            # administrator's stop): no signal to send, and its children,
            # which end with it, are what may still be in flight.
            return _wait_main_or_all(None, kids, time.monotonic() + timeout)
        kids += pidfds(set(children(pid)) - before)
        return _wait_main_or_all(main, kids, time.monotonic() + timeout)
    finally:
        _close([main, *kids])


def pidfds(pids: Iterable[int]) -> list[int]:
    """Pidfds of those of PIDS still running (the caller closes them)."""
    return [fd for fd in map(open_pidfd, pids) if fd is not None]


def wait_all(fds: list[int], timeout: float) -> bool:
    """True once every process of FDS (pidfds) has exited; False after TIMEOUT."""
    return _wait_main_or_all(None, fds, time.monotonic() + timeout)


def close_all(fds: Iterable[int]) -> None:
    _close(fds)


def _wait_main_or_all(main: int | None, kids: list[int], deadline: float) -> bool:
    poller = select.poll()
    for fd in (main, *kids):
        if fd is not None:
            poller.register(fd, select.POLLIN)
    alive = set(kids)
    while True:
        if not alive and (kids or main is None):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for fd, _event in poller.poll(left * 1000):
            if fd == main:
                return True
            alive.discard(fd)
            poller.unregister(fd)

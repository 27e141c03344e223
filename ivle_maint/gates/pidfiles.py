"""A daemon's pidfile: the pid it names believed only for the daemon's process.

Where no systemd tracks a service's main process (the init.d backend), its
pidfile names it, and ivle-maint then signals that process (the graceful
stop), takes copies of its sockets and waits for it to exit.  A pidfile is
a file from outside: a daemon killed without cleaning up leaves it behind,
and its pid is in time another process's, maybe a student's.  So:

- the pidfile passes the trusted gate (a regular file, root's, writable by
  no one else, a few bytes), or it names nothing;
- the process it names is believed only on kernel facts its daemon has
  and a process that took over the pid (a student's above all) has not:
  its real uid is the pidfile's owner (root: Apache's main process runs
  as root), and it sees the machine's own root directory (not a jail's).

Anything else is not the service's main process: None, and the caller
does without it (the init script's own stop).  What is believed comes
with a pidfd opened before the facts were read and found still running
after: every signal, socket copy and wait of the caller goes through it,
so a process that took the pid since (once the daemon has ended) is never
named by number, not even when the daemon ends during an init script's
stop and the caller waits for its exit afterwards.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import MaintError
from . import processes, trusted

log = logging.getLogger(__name__)

PIDFILE = trusted.Purpose("pidfile", 64, MaintError)


def main_process(path: Path) -> tuple[int, int] | None:
    """(pid, pidfd) of the process PATH names when it is provably the
    daemon's, else None.  The caller closes the pidfd."""
    try:
        fd = trusted.open_checked(path, PIDFILE)
    except FileNotFoundError:
        return None
    except MaintError as exc:
        log.warning("%s", exc)  # a pidfile others could write names no one
        return None
    try:
        owner = os.fstat(fd).st_uid
        text = trusted.read_fd(fd, PIDFILE, path).decode("ascii", "replace")
    except (OSError, MaintError):
        return None
    finally:
        os.close(fd)
    words = text.split()
    if not words or not words[0].isdigit() or int(words[0]) <= 1:
        return None
    pid = int(words[0])
    try:
        pidfd = os.pidfd_open(pid)  # before the facts: they are then its process's
    except (OSError, OverflowError):
        return None
    if is_daemons(pid, owner) and processes.still_running(pidfd):
        return pid, pidfd
    os.close(pidfd)
    return None


def is_daemons(pid: int, owner: int) -> bool:
    """PID's real uid is OWNER's and its root directory is the machine's:
    a daemon's process, not a student's (or anyone's) that took its pid or
    runs the same program (False when it is gone or cannot be read)."""
    psutil = processes.preload()
    try:
        if psutil.Process(pid).uids().real != owner:
            return False
        root, ours = os.stat(f"/proc/{pid}/root"), os.stat("/")
    except (psutil.Error, OSError):
        return False  # gone, or not ours to look at
    return (root.st_dev, root.st_ino) == (ours.st_dev, ours.st_ino)

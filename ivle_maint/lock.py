"""One ivle-maint at a time on a node: an flock under the run directory.

The kernel drops an flock when its holder dies, so a killed run never
leaves a stale lock; the file's content only names the holder for the
message the second runner prints.  The run directory must be root's and
not writable by others, and the lock file is never a symlink (safepaths).

`ivle-maint rollback` holds a second lock, the rollback lock, from its
start to its end: a second rollback is refused at once.  It holds the node
lock too until it runs dpkg, then lets it go: dpkg's maintainer scripts
run ivle-maint hooks, which take the node lock themselves (held across
dpkg, it would refuse them).  While the rollback lock is held, the node
lock goes only to a process whose environment names that rollback
(ROLLBACK_ENV, which the rollback passes to dpkg and dpkg to its scripts);
any other ivle-maint is refused, so nothing (a rerun, a jail rebuild) runs
between the rollback's hooks.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LockedError, MaintError
from .gates.text import shown
from .safepaths import open_nofollow, read_nofollow, safe_dir

ROLLBACK_LOCK = "rollback.lock"
# Set by `ivle-maint rollback` for the dpkg it runs: the rollback's pid.
ROLLBACK_ENV = "IVLE_MAINT_ROLLBACK_PID"


def _describe_holder(path: Path, fd: int) -> str:
    """Who holds the lock on FD (open on PATH): what the holder wrote in it,
    when the kernel says that process holds it; else the kernel's holder
    and its owner (a process of another user that opened the lock while an
    earlier version left it readable: no content of its says so)."""
    try:
        holder = read_nofollow(path).decode("utf-8", "replace").strip()
    except (OSError, MaintError):
        holder = ""
    pids = _kernel_holders(fd)
    written = holder.partition(":")[0].removeprefix("pid ").strip()
    if holder and (not pids or written in map(str, pids)):
        return shown(holder)
    for pid in pids:
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if uid != os.geteuid():
            return (f"pid {pid}, a process of uid {uid}, not an ivle-maint: end it (it opened "
                    f"the lock while an earlier version left it readable)")
        return f"pid {pid}"
    return "unknown process"


def _kernel_holders(fd: int) -> list[int]:
    """The pids /proc/locks says hold a flock on FD's file (none if unreadable)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            rows = [line.split() for line in table]
    except OSError:
        return []
    # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter's has "->" after "1:".
    return [int(row[4]) for row in rows
            if len(row) > 5 and row[1] == "FLOCK" and row[5] == inode and row[4].isdigit()]


@contextmanager
def _flock(path: Path, purpose: str, refused: Callable[[str], str]) -> Iterator[None]:
    """PATH flocked for the block, naming PURPOSE and this pid in it; else
    LockedError at once, its message REFUSED(the holder)."""
    try:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise MaintError(f"{path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(refused(_describe_holder(path, fd))) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _rollback_holder(run_dir: Path) -> str | None:
    """Who holds the rollback lock ("pid N: rollback ..."), None when nobody
    does, or when it is this process or the rollback whose dpkg runs us."""
    path = run_dir / ROLLBACK_LOCK
    try:
        fd = open_nofollow(path, os.O_RDONLY, 0o600)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MaintError(f"{path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(path, fd)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    pid = holder.partition(":")[0].removeprefix("pid ").strip()
    if pid and pid in (str(os.getpid()), os.environ.get(ROLLBACK_ENV)):
        return None
    return holder


@contextmanager
def node_lock(run_dir: Path, purpose: str) -> Iterator[None]:
    """Hold the node lock for the block, or raise LockedError at once
    (refused too while another process's rollback holds the rollback lock)."""
    safe_dir(run_dir, 0o755, "[paths] run")
    path = run_dir / "lock"
    with _flock(path, purpose, lambda holder: f"another ivle-maint holds {path}: {holder}"):
        # Looked at with the node lock held: a rollback starting now is
        # refused the node lock, so one of the two always sees the other.
        rollback = _rollback_holder(run_dir)
        if rollback is not None:
            raise LockedError(f"a rollback is under way on this node ({rollback}; "
                              f"{run_dir / ROLLBACK_LOCK}): wait for it to finish")
        yield


@contextmanager
def rollback_lock(run_dir: Path, purpose: str) -> Iterator[dict[str, str]]:
    """Hold the rollback lock for the block, or raise LockedError at once;
    yields the environment that lets the hooks of the dpkg this rollback
    runs take the node lock."""
    safe_dir(run_dir, 0o755, "[paths] run")
    path = run_dir / ROLLBACK_LOCK
    with _flock(path, purpose, lambda holder: f"a rollback is already under way on this "
                f"node ({holder}; {path}): wait for it to finish"):
        yield {ROLLBACK_ENV: str(os.getpid())}

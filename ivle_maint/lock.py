"""One ivle-maint at a time on a node: an flock under the run directory.

The kernel drops an flock when its holder dies, so a killed run never
leaves a stale lock; the file's content only names the holder for the
message the second runner prints.  The run directory must be root's and
not writable by others, and the lock file is never a symlink (safepaths).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LockedError, MaintError
from .safepaths import open_nofollow, read_nofollow, safe_dir


def _describe_holder(path: Path) -> str:
    try:
        holder = read_nofollow(path).decode("utf-8", "replace").strip()
    except (OSError, MaintError):
        holder = ""
    return holder or "unknown process"


@contextmanager
def node_lock(run_dir: Path, purpose: str) -> Iterator[None]:
    """Hold the node lock for the block, or raise LockedError at once."""
    safe_dir(run_dir, 0o755, "[paths] run")
    path = run_dir / "lock"
    try:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MaintError(f"{path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another ivle-maint holds {path}: {_describe_holder(path)}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""One ivle-maint at a time on a node: an flock under the run directory.

The kernel drops an flock when its holder dies, so a killed run never
leaves a stale lock; the file's content only names the holder for the
message the second runner prints.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LockedError


def _describe_holder(path: Path) -> str:
    try:
        holder = path.read_text(encoding="utf-8").strip()
    except OSError:
        holder = ""
    return holder or "unknown process"


@contextmanager
def node_lock(run_dir: Path, purpose: str) -> Iterator[None]:
    """Hold the node lock for the block, or raise LockedError at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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

"""Removing a directory tree the rollback kept or set aside (a jail
template: users' files, hard links shared with the live template), below
every other rollback module so that each can use it."""

from __future__ import annotations

import os
from pathlib import Path

from .. import system
from ..errors import MaintError
from ..gates.text import shown
from ..mountinfo import is_at_or_below, read


def tail(done: system.Completed) -> str:
    """A failed command's last lines, for a one-line message."""
    return "; ".join(done.tail[-3:]) or f"exit status {done.exit_code}"


def remove_tree(path: Path) -> None:
    """PATH gone, never a mount in it: one left there (a user's jail, a
    jail's home propagated into the template) is refused with one line.
    rm's --one-file-system alone is no guard: it skips only another
    device, and a bind mount of the same filesystem (how IVLE mounts a
    jail) has the same one, so rm would empty a student's home through it."""
    real = os.path.realpath(path)
    inside = sorted((m for m in read() if is_at_or_below(m.mountpoint, real)),
                    key=lambda m: m.depth)
    if inside:
        raise MaintError(f"could not remove {shown(path)}: {shown(inside[0].mountpoint)} is "
                         f"mounted there; unmount it (ivle-maint mounts unmount) and run again")
    done = system.run(["rm", "-rf", "--one-file-system", "--", str(path)])
    if not done.ok:
        raise MaintError(f"could not remove {shown(path)}: {tail(done)}")

"""Removing a directory tree the rollback kept or set aside (a jail
template: users' files, hard links shared with the live template), below
every other rollback module so that each can use it."""

from __future__ import annotations

from pathlib import Path

from .. import system
from ..errors import MaintError
from ..gates.mounted import refuse_mounts_in
from ..gates.text import shown


def tail(done: system.Completed) -> str:
    """A failed command's last lines, for a one-line message."""
    return "; ".join(done.tail[-3:]) or f"exit status {done.exit_code}"


def remove_tree(path: Path) -> None:
    """PATH gone; a mount in it (a user's jail, a home propagated into the
    template) refuses it first (gates/mounted.py: rm's --one-file-system
    would go through a bind mount)."""
    refuse_mounts_in(path, f"could not remove {shown(path)}", itself=True)
    done = system.run(["rm", "-rf", "--one-file-system", "--", str(path)])
    if not done.ok:
        raise MaintError(f"could not remove {shown(path)}: {tail(done)}")

"""Removing a directory tree the rollback kept or set aside (a jail
template: users' files, hard links shared with the live template), below
every other rollback module so that each can use it."""

from __future__ import annotations

from pathlib import Path

from .. import system
from ..errors import MaintError


def tail(done: system.Completed) -> str:
    """A failed command's last lines, for a one-line message."""
    return "; ".join(done.tail[-3:]) or f"exit status {done.exit_code}"


def remove_tree(path: Path) -> None:
    """PATH gone, as rm -rf --one-file-system does it (through the command
    gate): a mount left inside it (a user's jail) is never descended into."""
    done = system.run(["rm", "-rf", "--one-file-system", "--", str(path)])
    if not done.ok:
        raise MaintError(f"could not remove {path}: {tail(done)}")

"""Root required, said in one line, before anything acts.

Every ivle-maint command but those in OPEN_TO_ALL needs root: it stops
services, signals students' processes, unmounts jails, reads the state
directory (0700) or the settings and ivle.conf that hold the database
password.  Run by another user it would not fail cleanly but answer
wrongly ("0 processes use the jails": /proc hides other users' roots and
working directories; "no upgrades recorded": the journals are unreadable).
So cli.py asks this module once, after the command line is parsed and
before a command loads its settings or touches anything, and a command
that needs root exits 2 with one line saying so.

OPEN_TO_ALL: commands that only print ivle-maint's own text (--help,
--version, `settings --spec`) or a file the user reads with their own
rights (`settings`).
"""

from __future__ import annotations

import os

from ..errors import UsageError

OPEN_TO_ALL = frozenset({"settings"})


class RootRequired(UsageError):
    """A command that needs root, run by another user (exit 2)."""


def needs_root(command: str | None) -> bool:
    """Does the command (its first word: 'consoles', 'upgrade'...) need root?"""
    return command is not None and command not in OPEN_TO_ALL


def require(command: str | None, words: str | None = None) -> None:
    """Raise RootRequired when COMMAND needs root and this is not root.

    WORDS: how the command was typed ('consoles list'), for the message.
    """
    if not needs_root(command) or os.geteuid() == 0:
        return
    raise RootRequired(f"{words or command} needs root "
                       f"(this is uid {os.geteuid()}); run it as root, e.g. with sudo")

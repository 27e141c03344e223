"""Nothing is removed, copied or rewritten through a mount left in a tree.

IVLE's jails are bind mounts of one filesystem: a user's home bound into
the jail template (left there, or propagated from `MOUNTS/LOGIN/home` on a
node whose mounts are shared), or into a user's jail source.  A tool that
walks such a tree crosses into the mount: `rsync --delete` (ivle-buildjail)
or `rm -rf` empties the home, `cp -al` takes a student's files along;
`--one-file-system` is no guard, it skips only another device, and a bind
mount shows the same one.  So before a tree is handed to such a tool, the
kernel's mount table (mountinfo) is asked, and a mount in it refuses the
work in one line naming the mount.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import MaintError
from ..mountinfo import Mount, is_at_or_below, is_below, read
from .text import ivle_maint, shown


def mounts_in(tree: str | os.PathLike[str], *, itself: bool = False,
              table: Iterable[Mount] | None = None) -> list[Mount]:
    """Mounts strictly inside TREE (at TREE too when ITSELF), symlinks in
    its path resolved, the shallowest first."""
    real = os.path.realpath(tree)
    inside = is_at_or_below if itself else is_below
    return sorted((m for m in (read() if table is None else table)
                   if inside(m.mountpoint, real)), key=lambda m: m.depth)


def refuse_mounts_in(tree: str | os.PathLike[str], refused: str, *, itself: bool = False,
                     spared: Iterable[str | os.PathLike[str]] = (),
                     table: Iterable[Mount] | None = None) -> None:
    """MaintError naming the first mount in TREE (mounts_in) that is not at
    or below one of SPARED, whose contents the work never enters.  REFUSED
    opens the message ("could not remove X")."""
    kept = [os.path.realpath(p) for p in spared]
    for mount in mounts_in(tree, itself=itself, table=table):
        if not any(is_at_or_below(mount.mountpoint, k) for k in kept):
            raise MaintError(f"{refused}: {shown(mount.mountpoint)} is mounted inside "
                             f"{shown(Path(tree))}; unmount it ({ivle_maint('mounts', 'unmount')}) "
                             "and run again")

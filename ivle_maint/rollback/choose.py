"""Which way back: code only, or the database too, and why.

Code only when every migration applied since the restore point is additive
(db/migration_class.py): the old code runs on that schema, and every row
users wrote since stays.  Otherwise full: the database goes back to the
point's dump, and what was written since is lost (shown first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..db.migration_class import ADDITIVE, listed
from .point import RestorePoint

CODE_ONLY = "code only"
FULL = "full"


@dataclass(frozen=True)
class Way:
    kind: str  # CODE_ONLY or FULL
    why: str
    since: tuple[str, ...]  # migrations applied since the point
    blocking: tuple[str, ...] = ()  # those that are not additive

    @property
    def full(self) -> bool:
        return self.kind == FULL


def choose(point: RestorePoint, applied_now: Iterable[str]) -> Way:
    """The way back to POINT given the marker's applied keys now."""
    if point.marker is None:  # its upgrade never reached the migrate step
        return Way(CODE_ONLY, "the upgrade applied no migration: the database stays", ())
    since = tuple(sorted(set(applied_now) - set(point.marker)))
    if not since:
        return Way(CODE_ONLY, "no migration was applied since the restore point: the "
                   "database stays as it is", since)
    blocking = tuple(k for k in since if point.classes.get(k) != ADDITIVE)
    if not blocking:
        return Way(CODE_ONLY, f"every migration applied since the restore point is additive "
                   f"({listed(since)}): the old code runs on this schema; the database and "
                   "every row written since stay", since)
    shown = ", ".join(f"{k} ({point.classes.get(k, 'class unknown')})" for k in blocking[:5])
    return Way(FULL, f"not additive: {shown}: the database goes back to the restore point's "
               "dump", since, blocking)

"""Plan what migrate does, from the marker compared with the shipped files.

db.status's read_status() reads the marker and checksums the shipped
files (its names are importable from here too); make_plan() classifies
every pending file and lists everything that would block migrate (no
marker on a populated database, changed or out-of-order files, files that
cannot run), so that all of it is known before anything changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import MaintError
from ..gates.text import ivle_maint
from . import marker
from .classify import NO_TRANSACTION, Classified, classify
from .discovery import Migration
from .migration_class import DESTRUCTIVE, MigrationClass, Verdict, of_migration
from .status import Changed, Status, canonical, order_of, read_status

__all__ = ["Changed", "Plan", "Status", "canonical", "class_of", "classes_of", "make_plan",
           "order_of", "read_status"]


def class_of(m: Migration | Classified, accept_class: Iterable[str] = ()) -> MigrationClass:
    """A migration's release class; a file that cannot run is destructive, not proven."""
    if isinstance(m, Migration):
        try:
            m = classify(m)
        except MaintError as exc:
            return MigrationClass(m.key, Verdict(DESTRUCTIVE, f"not proven: {exc}"))
    return of_migration(m.key, m.statements, m.directives, accept_class,
                        one_transaction=m.mode != NO_TRANSACTION)


@dataclass
class Plan:
    """What migrate would do: classified pending files, and what blocks it."""

    status: Status
    pending: list[Classified]
    accept: list[Changed]
    problems: list[str] = field(default_factory=list)
    classes: list[MigrationClass] = field(default_factory=list)  # the pending ones'

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_problems(self, resume: str | None = None) -> None:
        if self.problems:
            more = len(self.problems) - 1
            extra = f" (and {more} more: see '{ivle_maint('db', 'migrate', '--dry-run')}')" \
                if more else ""
            raise MaintError(self.problems[0] + extra, resume=self._resume_accepting(resume))

    def _resume_accepting(self, resume: str | None) -> str | None:
        """RESUME with the --accept-changed a changed applied file needs, and
        the --accept-class a refused declared class needs.

        dpkg cannot pass the option: its postinst would fail the same way
        forever, so the one command that works is a rerun with it, and
        dpkg's own configure afterwards.
        """
        accepted = {c.key for c in self.accept}
        owed = [f"--accept-changed {c.key}" for c in self.status.changed if c.key not in accepted]
        owed += [f"--accept-class {c.key}" for c in self.classes if c.refused]
        if resume is None or not owed:
            return resume
        flags = " ".join(owed)
        if resume.startswith("dpkg "):
            return f"ivle-maint rerun {flags}, then: dpkg --configure -a"
        return f"{resume} {flags}"


def _out_of_order(st: Status) -> str:
    """What blocks migrations older than the newest applied, and the ways
    out, each of which works: a row deleted from the marker (the database
    has them: record them), a row added to it (delete it), or migrations
    that really never ran (apply them anyway)."""
    keys = ", ".join(m.key for m in st.out_of_order)
    newest = st.newest_applied or ""
    newest_order = order_of(newest)
    if newest in st.missing and newest_order is not None and \
            all(m.order < newest_order for m in st.shipped):
        return (
            f"{marker.TABLE} records migration {newest} as applied, newer than every shipped "
            f"migration and shipped by none, so {keys} look out of order: if no migration "
            f"{newest} ever ran here, delete its row (DELETE FROM {marker.TABLE} WHERE key = "
            f"'{newest}'), then run again; to apply them anyway, use --allow-out-of-order"
        )
    last = st.out_of_order[-1].key
    return (
        f"migration(s) {keys} are older than the newest applied ({newest}) but not recorded "
        f"as applied: if the database has them already (a row of {marker.TABLE} deleted), "
        f"record them without running them: {ivle_maint('db', 'baseline', '--force', last)}, "
        "then run "
        "again; if they never ran, apply them anyway with --allow-out-of-order"
    )


def make_plan(
    conn: Any,
    st: Status,
    accept_changed: Iterable[str],
    allow_out_of_order: bool,
    accept_class: Iterable[str] = (),
) -> Plan:
    """Classify every pending file and list everything that blocks migrate."""
    problems: list[str] = []
    if st.unmarked:
        problems.append(
            f"database {st.dbname} has tables ({', '.join(st.tables)}) but no record of the "
            f"migrations applied to it (table {marker.TABLE}): record them, without running "
            f"them, with '{ivle_maint('db', 'baseline', 'THROUGH')}', THROUGH being the newest "
            "migration "
            "its IVLE version shipped"
        )
    changed = {c.key: c for c in st.changed}
    accept: list[Changed] = []
    for key in accept_changed:
        wanted = canonical(key)
        if wanted is None or wanted not in changed:
            problems.append(f"--accept-changed {key}: not an applied migration whose file changed")
        else:
            accept.append(changed[wanted])
    accepted = {c.key for c in accept}
    for c in st.changed:
        if c.key not in accepted:
            problems.append(
                f"migration {c.key} was applied but {c.path} has changed since (sha256 "
                f"{c.recorded[:12]} then, {c.current[:12]} now): check the change, then "
                f"accept it with --accept-changed {c.key}"
            )
    if st.out_of_order and not allow_out_of_order:
        problems.append(_out_of_order(st))
    pending: list[Classified] = []
    version = conn.server_version
    standard = conn.info.parameter_status("standard_conforming_strings") != "off"
    for m in st.pending:
        try:
            pending.append(classify(m, server_version=version, standard_strings=standard))
        except MaintError as exc:
            problems.append(str(exc))
    classes, refusals = classes_of(pending, accept_class)
    return Plan(st, pending, accept, problems + refusals, classes)


def classes_of(pending: list[Classified], accept_class: Iterable[str]
               ) -> tuple[list[MigrationClass], list[str]]:
    """The pending migrations' classes, and what blocks: a milder class
    declared and not accepted, or --accept-class naming no such migration."""
    accepted = {canonical(key) or key: key for key in accept_class}
    classes = [class_of(c, accepted) for c in pending]
    problems = [c.refusal() for c in classes if c.refused]
    overriding = {c.key for c in classes if c.overrides}
    problems += [f"--accept-class {typed}: not a pending migration whose header declares a "
                 "milder class than found" for key, typed in accepted.items()
                 if key not in overriding]
    return classes, problems

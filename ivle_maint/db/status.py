"""The marker compared with the shipped files: what `ivle-maint db status` shows.

read_status() reads the marker and checksums the shipped files; status()
does it on a connection of its own.  Reading only: nothing here splits,
classifies, applies or backs up a migration, so `db status` loads none of
that (sqlsplit, pglast, pg_dump's backups, sh): db.plan and db.migrations
build on this module, never it on them (tests/unit/test_import_budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..output import RecordingReporter, Reporter
from . import marker
from .discovery import Migration, checksums, discover, parse_key
from .marker import MarkerRow
from .session import session


def order_of(key: str) -> tuple[int, int] | None:
    try:
        return parse_key(key)[0]
    except ValueError:
        return None


def canonical(key: str) -> str | None:
    try:
        return parse_key(Path(key).name)[1]
    except ValueError:
        return None


@dataclass(frozen=True)
class Changed:
    """An applied migration whose file no longer matches its checksum."""

    key: str
    path: Path
    recorded: str
    current: str


@dataclass(frozen=True)
class Status:
    """The database's marker compared with the shipped migrations."""

    dbname: str
    directory: Path
    marker: bool  # the marker table exists
    applied: dict[str, MarkerRow]
    shipped: list[Migration]
    pending: list[Migration]  # shipped, never applied, in order (out-of-order ones included)
    out_of_order: list[Migration]  # pending but older than the newest applied
    changed: list[Changed]
    missing: list[str]  # applied keys no longer shipped (informational)
    tables: list[str]  # a few tables other than the marker: populated?

    @property
    def newest_applied(self) -> str | None:
        keys = [k for k in self.applied if order_of(k) is not None]
        return max(keys, key=lambda k: order_of(k) or (0, 0)) if keys else None

    @property
    def unmarked(self) -> bool:
        """A populated database with no record of what was applied."""
        return not self.applied and bool(self.tables)


def read_status(conn: Any, dbname: str, directory: Path, shipped: list[Migration]) -> Status:
    applied = marker.applied(conn)
    has_marker = bool(applied) or marker.exists(conn)
    conn.rollback()
    tables = marker.user_tables(conn) if not applied else []
    conn.rollback()
    by_key = {m.key: m for m in shipped}
    pending = [m for m in shipped if m.key not in applied]
    newest = max((o for k in applied if (o := order_of(k)) is not None), default=None)
    out_of_order = [m for m in pending if newest is not None and m.order < newest]
    changed = []
    current = dict(checksums(by_key[key] for key in applied if key in by_key))
    for key, row in applied.items():
        if key in by_key and (now := current[by_key[key]]) != row.checksum:
            changed.append(Changed(key, by_key[key].path, row.checksum, now))
    missing = [k for k in applied if k not in by_key]
    return Status(
        dbname,
        directory,
        has_marker,
        applied,
        shipped,
        pending,
        out_of_order,
        changed,
        missing,
        tables,
    )


def directory_of(settings: Settings, migrations_dir: Path | str | None) -> Path:
    """MIGRATIONS_DIR, or else [paths] migrations."""
    return Path(migrations_dir) if migrations_dir else settings.path_of("migrations")


def status(
    settings: Settings,
    *,
    migrations_dir: Path | str | None = None,
    reporter: Reporter | None = None,
) -> Status:
    """Applied, pending, changed and out-of-order migrations; changes nothing."""
    directory = directory_of(settings, migrations_dir)
    shipped = discover(directory)
    with session(settings, reporter or RecordingReporter(), None) as s:
        return read_status(s.conn, s.params.dbname, directory, shipped)

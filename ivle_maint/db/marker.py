"""The marker: table ivle_maint_migrations records every applied migration.

IVLE records no schema version of its own, so ivle-maint keeps one row per
migration it applied (or was told, by a baseline, is already applied):

    key                 text PRIMARY KEY   20090101-01 (or a bare 20090101)
    filename            text               the file's name when it was applied
    checksum            text               sha256 of the file's bytes
    mode                text               transaction | own-transaction |
                                           no-transaction | baseline
    applied_at          timestamptz        when (the transaction's start)
    duration            double precision   seconds it ran (NULL: baseline)
    host                text               the node that ran it
    ivle_maint_version  text               ivle-maint's version
    package_version     text               IVLE's package version, if known
    note                text               e.g. a changed checksum accepted
    class_override      text               the class --accept-class took over
                                           the one found, and why it was found
    class_override_by   text               who accepted it (the sudo login)

The last two came later: ensure() adds them to an older table.
A migration's row is inserted in the migration's own transaction, so the
row exists exactly when the migration's changes do.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import __version__
from ..errors import MaintError
from ..gates.text import shown
from ..pgdriver import psycopg2
from .discovery import parse_key

log = logging.getLogger(__name__)

TABLE = "ivle_maint_migrations"
BASELINE = "baseline"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key text PRIMARY KEY,
    filename text NOT NULL,
    checksum text NOT NULL,
    mode text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration double precision,
    host text NOT NULL,
    ivle_maint_version text NOT NULL,
    package_version text,
    note text,
    class_override text,
    class_override_by text
);
COMMENT ON TABLE {TABLE} IS
    'IVLE database migrations applied (or baselined) by ivle-maint; do not edit by hand';
"""

# What applied() reads: a NULL checksum (a row changed by hand) is read as
# '' so that it shows as changed and --accept-changed can replace it; a
# time Python cannot hold (infinity, year 10000, BC) is read as NULL: it is
# only shown, and a fetch of it would fail.
_COLUMNS = (
    "key, filename, coalesce(checksum, ''), mode, CASE WHEN applied_at BETWEEN "
    "'0001-01-03' AND '9999-12-29' THEN applied_at END, duration, host, ivle_maint_version, "
    "package_version, note"
)


@dataclass(frozen=True)
class MarkerRow:
    key: str
    filename: str
    checksum: str
    mode: str
    applied_at: datetime | None  # None: not recorded, or out of Python's range
    duration: float | None
    host: str
    ivle_maint_version: str
    package_version: str | None
    note: str | None
    class_override: str | None = None
    class_override_by: str | None = None


def exists(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE])
        found: bool = cur.fetchone()[0]
    return found


def ensure(conn: Any) -> None:
    """Create the marker table on first use, in a transaction of its own.

    Only when it is missing: CREATE TABLE IF NOT EXISTS would leave the
    server's NOTICE "already exists" on the connection, to be logged with
    the next migration's notices as if that migration had said it.
    """
    if exists(conn):
        missing = [name for name in OPTIONAL_COLUMNS if name not in _columns(conn)]
        conn.rollback()
        if missing:  # a table an older ivle-maint made
            adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {name} {OPTIONAL_COLUMNS[name]}"
                             for name in missing)
            with conn, conn.cursor() as cur:
                cur.execute(f"ALTER TABLE {TABLE} {adds}")
        return
    with conn, conn.cursor() as cur:
        cur.execute(DDL)
    for notice in conn.notices:
        log.info("%s: %s", TABLE, notice.strip())
    del conn.notices[:]


# The row the preflight inserts, in a transaction it rolls back.
PROBE_KEY = "ivle-maint-preflight"


def why_not_writable(conn: Any) -> str | None:
    """Why this role could not create or write the marker, or None.

    Proved by doing it in a transaction that is rolled back: the table
    created if missing, a row inserted and updated, as the baseline and
    every migration will.  The server's own checks answer (privileges, a
    read-only database, a trigger, row security), not a privilege function
    that is satisfied by any one of the privileges it is asked about.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT current_schema(), current_user")
        schema, role = cur.fetchone()
        doing = "create table"
        try:
            if not exists(conn):
                if schema is None:
                    return (f"role {role} has no schema to create table {TABLE} in "
                            "(see its search_path)")
                cur.execute(DDL)
                del conn.notices[:]
            doing = "insert into table"
            record(cur, key=PROBE_KEY, filename="(preflight)", checksum="", mode="preflight",
                   duration=None, note="rolled back")
            doing = "update table"
            cur.execute(f"UPDATE {TABLE} SET note = note WHERE key = %s", [PROBE_KEY])
        except (psycopg2.Error, MaintError) as exc:  # MaintError: a trigger ate the row
            return _refusal(role, schema, doing, exc)
        finally:
            conn.rollback()
    return None


def _refusal(role: str, schema: str | None, doing: str, exc: Exception) -> str:
    """One line: what the role may not do, the server's reason, and the GRANT."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    why = lines[0] if lines else type(exc).__name__
    denied = getattr(exc, "pgcode", None) == "42501"  # insufficient_privilege
    if doing == "create table":
        grant = f"GRANT CREATE ON SCHEMA {schema} TO {role}"
        return f"role {role} may not create table {TABLE} in schema {schema} ({why})" + (
            f": {grant}" if denied else "")
    grant = f"GRANT SELECT, INSERT, UPDATE ON {TABLE} TO {role}"
    return f"role {role} may not {doing} {TABLE} ({why})" + (f": {grant}" if denied else "")


# Each column's type, as DDL creates it: a column dropped by hand is named
# with the statement that adds it back.
_TYPES = {
    "key": "text", "filename": "text", "checksum": "text", "mode": "text",
    "applied_at": "timestamptz DEFAULT now()", "duration": "double precision",
    "host": "text", "ivle_maint_version": "text", "package_version": "text", "note": "text",
}


# Nullable columns added since the first release; ensure() adds them.
OPTIONAL_COLUMNS = {"class_override": "text", "class_override_by": "text"}


def _columns(conn: Any) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attnum > 0 AND NOT attisdropped", [TABLE])
        return {row[0] for row in cur.fetchall()}


def missing_columns(conn: Any) -> list[str]:
    """The marker's columns that are not in the table (dropped by hand)."""
    found = _columns(conn)
    return [name for name in _TYPES if name not in found]


def applied(conn: Any) -> dict[str, MarkerRow]:
    """Every marker row by key; {} when there is no marker table."""
    if not exists(conn):
        return {}
    missing = missing_columns(conn)
    if missing:
        adds = ", ".join(f"ADD COLUMN {name} {_TYPES[name]}" for name in missing)
        raise MaintError(
            f"table {TABLE} has no column {', '.join(missing)} (changed by hand?): add it "
            f"back, then run again: ALTER TABLE {TABLE} {adds}")
    check_types(conn)
    with conn.cursor() as cur:
        # An older table has no optional columns until ensure() adds them.
        present = _columns(conn)
        optional = ", ".join(name if name in present else f"NULL AS {name}"
                             for name in OPTIONAL_COLUMNS)
        cur.execute(f"SELECT {_COLUMNS}, {optional} FROM {TABLE} ORDER BY key")
        rows = {row[0]: MarkerRow(*row) for row in cur.fetchall()}
    check_keys(rows)  # on the keys as stored: a key's fix must name it exactly
    return {key: _one_line_fields(row) for key, row in rows.items()}


_FIELDS = tuple(field.name for field in dataclasses.fields(MarkerRow))
FIELD_LIMIT = 200  # characters of a row's text field: a key, a host, a login


def _one_line_fields(row: MarkerRow) -> MarkerRow:
    """ROW with each text field one printable line (gates.text.shown).

    The table is the database's: anyone with IVLE's login may write it.
    Every reader gets its rows from here, so no key, host, mode or login
    (`db status` prints them) starts a line of its own in a listing: a
    forged `applied` row, a fake prompt.  What ivle-maint writes is
    printable and short: unchanged."""
    # Field by field, not dataclasses.asdict: it deep-copies every value,
    # and 302 rows took 65 ms of `db status`.
    changed: dict[str, Any] = {}
    for field in _FIELDS:
        value = getattr(row, field)
        if isinstance(value, str) and (line := shown(value, FIELD_LIMIT)) != value:
            changed[field] = line
    return dataclasses.replace(row, **changed) if changed else row


# The kind of value each column must hold (pg_type.typcategory): a date
# or time, a number, else text (not char(n): it pads a key with spaces); a
# type changed by hand would give Python a value it cannot compare or show.
_CATEGORIES = {"applied_at": ("D", "timestamptz"), "duration": ("N", "double precision")}
_TEXT_TYPES = ("text", "varchar")


def check_types(conn: Any) -> None:
    """Refuse a column whose type was changed by hand, naming the ALTER."""
    with conn.cursor() as cur:
        cur.execute("SELECT a.attname, t.typcategory, t.typname, "
                    "format_type(a.atttypid, a.atttypmod) "
                    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                    "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 "
                    "AND NOT a.attisdropped ORDER BY a.attnum", [TABLE])
        found = cur.fetchall()
    for name, category, typname, type_name in found:
        if name not in _TYPES and name not in OPTIONAL_COLUMNS:
            continue  # a column of the administrator's own
        wanted, sql_type = _CATEGORIES.get(name, ("S", "text"))
        if category != wanted or (wanted == "S" and typname not in _TEXT_TYPES):
            raise MaintError(
                f"column {name} of table {TABLE} is of type {type_name}, not {sql_type} "
                f"(changed by hand?): change it back, then run again: ALTER TABLE {TABLE} "
                f"ALTER COLUMN {name} TYPE {sql_type} USING {name}::text::{sql_type}")


def check_keys(rows: dict[str, MarkerRow]) -> None:
    """The row gate: every key is a migration key as ivle-maint writes it.

    The marker is compared with the shipped files by key, so a row whose
    key is spelled otherwise (20090101-1, ' 20090101-01', 20090101-01.sql,
    other digits) records a migration that would look pending and run
    again.  Such a row is refused, with the statement that fixes it.
    """
    bad = [key for key in rows if _canonical(key) != key]
    if not bad:
        return
    key = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    meant = _canonical(key) or _canonical(_plain(key))
    where = f"WHERE key = {_literal(key)}"
    if meant is None:
        fix = (f"if it records a migration, set its key to that migration's (YYYYMMDD-NN), "
               f"else delete it: DELETE FROM {TABLE} {where}")
    elif meant in rows:
        fix = f"migration {meant} has its own row: delete this one: DELETE FROM {TABLE} {where}"
    else:
        fix = (f"if it records migration {meant}: UPDATE {TABLE} SET key = '{meant}' {where}; "
               f"if not, delete it: DELETE FROM {TABLE} {where}")
    raise MaintError(f"table {TABLE} has a row whose key {key!r} is not a migration key"
                     f"{more} (changed by hand?): {fix}; then run again")


def _canonical(key: str) -> str | None:
    try:
        return parse_key(key)[1]
    except ValueError:
        return None


def _plain(key: str) -> str:
    """KEY with compatibility characters folded, other digits made ASCII
    and spaces or invisible characters dropped: what a hand may have meant."""
    import unicodedata

    folded = unicodedata.normalize("NFKC", key)
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c
                   for c in folded if c.isprintable() and not c.isspace())


def _literal(text: str) -> str:
    """TEXT as an SQL string literal a person can paste: E'' with escapes
    for what is not printable ASCII, so no character is lost in the line."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return "'" + text.replace("'", "''") + "'"
    out = []
    for c in text:
        if c in "\\'":
            out.append("\\" + c)
        elif c.isascii() and c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return "E'" + "".join(out) + "'"


def user_tables(conn: Any, limit: int = 5) -> list[str]:
    """Some tables other than the marker: a populated database has some."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT n.nspname || '.' || c.relname
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
               AND c.relname <> %s
             ORDER BY 1 LIMIT %s
            """,
            [TABLE, limit],
        )
        return [row[0] for row in cur.fetchall()]


_TEMP_LAST = ("SELECT set_config('search_path', concat_ws(', ', "
              "nullif(current_setting('search_path'), ''), 'pg_temp'), true)")


def record(
    cur: Any,
    *,
    key: str,
    filename: str,
    checksum: str,
    mode: str,
    duration: float | None,
    host: str | None = None,
    package_version: str | None = None,
    note: str | None = None,
    class_override: tuple[str, str] | None = None,
) -> None:
    """Insert one row in the caller's transaction; exactly one row or an error.

    class_override: (what --accept-class took, who), written with the row
    so that a migration is never applied without it (ensure() made the
    columns)."""
    # pg_temp last, for the rest of the caller's transaction: PostgreSQL
    # searches it first unless the search_path names it, so a temporary table
    # of the marker's name (a migration's own, made in that very session)
    # took the row, and it was gone with the table: the migration applied,
    # recorded nowhere, and run again by the next run.
    cur.execute(_TEMP_LAST)
    columns = ["key", "filename", "checksum", "mode", "duration", "host",
               "ivle_maint_version", "package_version", "note"]
    values: list[object] = [key, filename, checksum, mode, duration,
                            host or socket.gethostname(), __version__, package_version, note]
    if class_override is not None:
        columns += ["class_override", "class_override_by"]
        values += list(class_override)
    cur.execute(
        f"INSERT INTO {TABLE} ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(values))})",
        values,
    )
    if cur.rowcount != 1:  # as Alembic checks its version row
        raise MaintError(f"recording migration {key} in {TABLE} changed {cur.rowcount} rows")


def accept_checksum(cur: Any, key: str, old: str, new: str, note: str) -> None:
    """Record a changed file's new checksum, if the row still has the old one."""
    cur.execute(
        # coalesce: applied() reads a NULL checksum as ''
        f"UPDATE {TABLE} SET checksum = %s, note = %s WHERE key = %s "
        "AND coalesce(checksum, '') = %s",
        [new, note, key, old],
    )
    if cur.rowcount != 1:
        raise MaintError(f"accepting the change to {key} changed {cur.rowcount} rows in {TABLE}")

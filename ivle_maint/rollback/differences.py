"""What swapping a restored database in would change, per table.

For every user table of either database (schema-qualified; ivle-maint's
own ivle_maint_* tables included, and marked): the rows only in the live
database (written since the dump: the swap loses them) and the rows only
in the restored one (deleted since the dump: the swap brings them back).
An UPDATE since the dump is one of each.  Rows are compared as multisets
(a table without a primary key may hold the same row twice).

A table whose columns differ (a migration added, dropped or retyped one)
says so, and is compared on the columns both have with the same type; with
none in common, by its row counts alone.

How: each row is hashed on the server (md5 of the row's text).  Phase one
fetches, per table and database, one count and one sum of hashes for each
of BUCKETS buckets of the hashes, so a table that did not change costs one
scan and no rows on the wire; phase two fetches, through a server-side
cursor, only the hashes of the buckets that differ, at most CHUNK_ROWS at
a time.  Both databases are read in one REPEATABLE READ transaction each,
so both phases see the same rows.  Everything read from a database is
outside text: identifiers are quoted by psycopg2.sql, names escaped and
bounded where shown.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from ..db.connect import ConnectParams
from ..gates.text import shown
from ..output import Reporter
from .sessions import open_session

BUCKET_CHARS = 3  # the hash's first hex digits: 4096 buckets
CHUNK_ROWS = 200_000  # the most hashes held at once, per database
FETCH_ROWS = 10_000
OWN_PREFIX = "ivle_maint_"

Table = tuple[str, str]  # (schema, name)
Columns = dict[str, str]  # name -> type, in the table's order

_TABLES = r"""
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
ORDER BY n.nspname, c.relname, a.attnum
"""


@dataclass(frozen=True)
class TableDifference:
    """One table that differs between the live and the restored database."""

    schema: str
    name: str
    only_in_live: int  # rows written since the dump: lost by the swap
    only_in_restored: int  # rows deleted since the dump: back after the swap
    live_rows: int | None  # None: no such table in the live database
    restored_rows: int | None  # None: no such table in the restored one
    schema_differs: bool = False
    compared: str = "rows"  # or "N common columns", or "row counts"

    @property
    def ivle_maint(self) -> bool:
        """One of ivle-maint's own tables (its migration marker, the cluster's)."""
        return self.name.startswith(OWN_PREFIX)

    def label(self) -> str:
        """schema.name, each part escaped and bounded (names come from the database)."""
        return f"{shown(self.schema, 63)}.{shown(self.name, 63)}"

    def line(self) -> str:
        """One line for a person, before the swap."""
        text = (f"{self.label()}: {self.only_in_live} rows lost (written since the dump), "
                f"{self.only_in_restored} rows back (deleted since the dump)")
        if self.live_rows is None:
            text += "; table only in the dump"
        elif self.restored_rows is None:
            text += "; table only in the live database (dropped by the swap)"
        elif self.schema_differs:
            text += f"; schema differs (compared on {self.compared})"
        return text + (" [ivle-maint's own table]" if self.ivle_maint else "")


def summary(found: list[TableDifference]) -> list[str]:
    """The lines that show what a swap would change ("nothing" when nothing)."""
    if not found:
        return ["no row differs: the swap loses nothing"]
    lost = sum(d.only_in_live for d in found)
    return [f"{lost} rows written since the dump would be lost, in {len(found)} tables:",
            *(d.line() for d in found)]


def _tables(cur: Any) -> dict[Table, Columns]:
    cur.execute(_TABLES)
    tables: dict[Table, Columns] = {}
    for schema, name, column, typ in cur.fetchall():
        columns = tables.setdefault((schema, name), {})
        if column is not None:
            columns[column] = typ
    return tables


def _hashes(table: Table, columns: list[str]) -> sql.Composed:
    """Each row's md5 (hex) as h, over COLUMNS in that order."""
    row = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)
    return sql.SQL("SELECT md5(ROW({})::text) AS h FROM {}.{} t").format(
        row, sql.Identifier(table[0]), sql.Identifier(table[1]))


def _buckets(cur: Any, table: Table, columns: list[str]) -> dict[str, tuple[int, int]]:
    """Bucket -> (rows, sum of their hashes' next 52 bits)."""
    cur.execute(sql.SQL(
        "SELECT left(h, {n}), count(*), sum(('x' || substr(h, {n} + 1, 13))::bit(52)::bigint) "
        "FROM ({rows}) s GROUP BY 1").format(n=sql.Literal(BUCKET_CHARS),
                                             rows=_hashes(table, columns)))
    return {bucket: (count, int(total)) for bucket, count, total in cur.fetchall()}


def _chunks(buckets: list[str], rows: dict[str, int]) -> Iterator[list[str]]:
    """BUCKETS in groups of at most CHUNK_ROWS rows (a bigger bucket alone)."""
    chunk: list[str] = []
    held = 0
    for bucket in buckets:
        if chunk and held + rows[bucket] > CHUNK_ROWS:
            yield chunk
            chunk, held = [], 0
        chunk.append(bucket)
        held += rows[bucket]
    if chunk:
        yield chunk


def _counted(conn: Any, table: Table, columns: list[str], buckets: list[str]) -> Counter[str]:
    """The hashes of BUCKETS' rows, streamed through a server-side cursor."""
    found: Counter[str] = Counter()
    with conn.cursor(name="ivle_maint_rollback_hashes") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(sql.SQL("SELECT h FROM ({}) s WHERE left(h, {}) = ANY(%s)").format(
            _hashes(table, columns), sql.Literal(BUCKET_CHARS)), [buckets])
        while rows := cur.fetchmany(FETCH_ROWS):
            found.update(row[0] for row in rows)
    return found


def _rows(cur: Any, table: Table) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(table[0]), sql.Identifier(table[1])))
    count: int = cur.fetchone()[0]
    return count


def _compare(live: Any, restored: Any, table: Table, columns: list[str]) -> tuple[int, int, int,
                                                                                   int]:
    """(only in live, only in restored, live rows, restored rows) over COLUMNS."""
    with live.cursor() as lcur, restored.cursor() as rcur:
        ours, theirs = _buckets(lcur, table, columns), _buckets(rcur, table, columns)
    live_rows = sum(count for count, _ in ours.values())
    restored_rows = sum(count for count, _ in theirs.values())
    differ = sorted(b for b in ours.keys() | theirs.keys() if ours.get(b) != theirs.get(b))
    held = {b: max(ours.get(b, (0, 0))[0], theirs.get(b, (0, 0))[0]) for b in differ}
    lost = back = 0
    for chunk in _chunks(differ, held):
        mine, dumped = _counted(live, table, columns, chunk), _counted(restored, table, columns,
                                                                        chunk)
        lost += sum((mine - dumped).values())
        back += sum((dumped - mine).values())
    return lost, back, live_rows, restored_rows


def _difference(live: Any, restored: Any, table: Table, live_cols: Columns | None,
                restored_cols: Columns | None) -> TableDifference:
    schema, name = table
    if restored_cols is None:
        with live.cursor() as cur:
            count = _rows(cur, table)
        return TableDifference(schema, name, count, 0, count, None)
    if live_cols is None:
        with restored.cursor() as cur:
            count = _rows(cur, table)
        return TableDifference(schema, name, 0, count, None, count)
    common = sorted(c for c, typ in live_cols.items() if restored_cols.get(c) == typ)
    differs = live_cols != restored_cols
    if differs and not common:
        with live.cursor() as lcur, restored.cursor() as rcur:
            live_rows, restored_rows = _rows(lcur, table), _rows(rcur, table)
        return TableDifference(schema, name, max(0, live_rows - restored_rows),
                               max(0, restored_rows - live_rows), live_rows, restored_rows,
                               True, "row counts")
    lost, back, live_rows, restored_rows = _compare(live, restored, table, common)
    compared = f"{len(common)} common columns" if differs else "rows"
    return TableDifference(schema, name, lost, back, live_rows, restored_rows, differs, compared)


def _reader(params: ConnectParams, dbname: str, reporter: Reporter | None) -> Any:
    conn = open_session(params, dbname, reporter, autocommit=False)
    # One snapshot for both phases; nothing written.
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


def differences(params: ConnectParams, live: str, restored: str, *,
                reporter: Reporter | None = None) -> list[TableDifference]:
    """The tables whose rows (or columns) differ between LIVE and RESTORED,
    by schema and name; [] when the swap would change no row."""
    with closing(_reader(params, live, reporter)) as lconn, \
            closing(_reader(params, restored, reporter)) as rconn:
        with lconn.cursor() as cur:
            live_tables = _tables(cur)
        with rconn.cursor() as cur:
            restored_tables = _tables(cur)
        found = []
        for table in sorted(live_tables.keys() | restored_tables.keys()):
            diff = _difference(lconn, rconn, table, live_tables.get(table),
                               restored_tables.get(table))
            if diff.only_in_live or diff.only_in_restored or diff.schema_differs \
                    or diff.live_rows is None or diff.restored_rows is None:
                found.append(diff)
        lconn.rollback()
        rconn.rollback()
    return found

"""The cluster's own tables live on through a full rollback's swap.

The restore point's dump holds ivle_maint_nodes and ivle_maint_media as
they were when the upgrade dumped the database.  Swapped in as they are,
the master's next waits would read the slaves' rows of that moment (an
upgrading slave with 0 jail mounts: the jail tree looks free while a slave
may still have jails mounted now), and the media versions chosen since
would be forgotten (two slaves could choose differently).  So their rows
are copied from the live database into the restored one just before the
swap.  A row a node writes in between is lost; each node writes its row
again at its next step or look, and a lost row errs to the safe side (an
older row of a node upgrading says less is done).
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from ..cluster import table
from ..db.connect import ConnectParams
from ..output import Reporter
from ..pgdriver import sql
from .sessions import open_session

CARRIED = (table.NODES, table.MEDIA)


def carry(params: ConnectParams, live: str, restored: str, *, grantee: str | None,
          reporter: Reporter | None = None) -> list[str]:
    """Copy the CARRIED tables' rows from LIVE into RESTORED; what was carried.

    PARAMS: ivle.conf's login (restore.fill_params), never a superuser:
    the tables are that login's, and a trigger it put on one ran, as the
    superuser who wrote the rows, with the superuser's rights."""
    with closing(open_session(params, live, reporter, autocommit=False)) as src, \
            closing(open_session(params, restored, reporter, autocommit=False)) as dst:
        found = {name: _read(src, name) for name in CARRIED}
        src.rollback()
        if not any(found.values()):
            return []
        table.ensure(dst, grantee=grantee)  # a dump from before the tables existed
        carried = []
        with dst, dst.cursor() as cur:
            for name, rows in found.items():
                if rows is not None:
                    _replace(cur, name, *rows)
                    carried.append(f"{name} ({len(rows[1])} rows)")
        return carried


def _read(conn: Any, name: str) -> tuple[list[str], list[tuple[Any, ...]]] | None:
    """(columns, rows) of NAME; None when it does not exist.

    Each value as PostgreSQL writes it (text), and written back as such:
    the rows are anyone's with IVLE's database login, and a value Python
    cannot hold (a last_seen in year 10000: a ValueError) or holds as
    another ('infinity': datetime.max) would fail the rollback's copy, or
    change the row."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [name])
        columns = [r[0] for r in cur.fetchall()]
        cur.execute(sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
            sql.Identifier(name)))
        return columns, [tuple(r) for r in cur.fetchall()]


def _replace(cur: Any, name: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """NAME's rows in CUR's database become ROWS (the columns both have)."""
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped", [name])
    have = {r[0] for r in cur.fetchall()}
    keep = [i for i, c in enumerate(columns) if c in have]
    cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(name)))
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(columns[i]) for i in keep),
        sql.SQL(", ").join([sql.Placeholder()] * len(keep)))
    for row in rows:
        cur.execute(insert, [row[i] for i in keep])

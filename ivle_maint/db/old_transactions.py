"""Before a migration starts: no old transaction holds a lock on its tables.

A transaction open for minutes (a forgotten psql session, a report) that
read a table a migration alters would make every try of the migration
give way until the retries run out.  So a migration does not start while
a transaction older than [database] old_transaction_age holds a lock on a
table it touches (db/touched_tables.py; every table in the database when
that cannot be told): the holder is named (server pid, user, since when,
how old, its query), told again every tell_interval, and waited for up to
the limit given; then the migration fails in one line naming the
pg_terminate_backend() that ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import MaintError
from ..gates.waits import printable

POLL_SECONDS = 0.25

_OLD = """
WITH named AS (
    SELECT to_regclass(n)::oid AS rel FROM unnest(%(names)s::text[]) AS n
), wanted AS (
    SELECT rel FROM named WHERE rel IS NOT NULL
    UNION SELECT i.indrelid FROM pg_index i JOIN named ON i.indexrelid = named.rel
)
SELECT a.pid, a.usename, a.application_name, a.state, a.xact_start,
       extract(epoch FROM now() - a.xact_start), a.query,
       string_agg(DISTINCT l.relation::regclass::text, ', ')
  FROM pg_locks l
  JOIN pg_stat_activity a ON a.pid = l.pid
  JOIN pg_class c ON c.oid = l.relation
 WHERE l.locktype = 'relation' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND c.relnamespace <> 'pg_catalog'::regnamespace
   AND a.pid <> pg_backend_pid()
   AND a.backend_type = 'client backend'  -- autovacuum gives way to DDL by itself
   AND a.xact_start < now() - make_interval(secs => %(age)s)
   AND (%(every)s OR l.relation IN (SELECT rel FROM wanted))
 GROUP BY a.pid, a.usename, a.application_name, a.state, a.xact_start, a.query
 ORDER BY a.xact_start, a.pid
"""


@dataclass(frozen=True)
class OldTransaction:
    pid: int
    text: str  # who, since when, how old, what it runs, which tables

    def end(self) -> str:
        return f"SELECT pg_terminate_backend({self.pid});"


class StillHeld(MaintError):
    """Old transactions held a migration's tables for longer than it waits."""


def find(conn: Any, tables: frozenset[str] | None, age: float) -> list[OldTransaction]:
    """Transactions older than AGE seconds holding a lock on TABLES (None: any)."""
    with conn.cursor() as cur:
        cur.execute(_OLD, {"names": sorted(tables or ()), "age": age,
                           "every": tables is None})
        rows = cur.fetchall()
    conn.rollback()
    found = []
    for pid, user, app, state, since, seconds, query, relations in rows:
        app_text = f", {printable(app, 60)}" if app else ""
        when = f", since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if since else ""
        what = f"{printable(state or '?', 40)}: {printable(query)}" if query else "?"
        text = (f"server pid {pid} (user {printable(user or '?', 64)}{app_text}{when}, "
                f"{float(seconds):.0f}s old; {what}) holds a lock on {printable(relations, 200)}")
        found.append(OldTransaction(int(pid), text))
    return found


def wait_until_gone(conn: Any, *, doing: str, tables: frozenset[str] | None, age: float,
                    limit: float, tell: Callable[[str], None], interval: float) -> None:
    """Return once no transaction older than AGE holds a lock on TABLES;
    tell every INTERVAL who does; raise StillHeld after LIMIT seconds (0: never)."""
    found = find(conn, tables, age)
    if not found:
        return
    started = time.monotonic()
    bound = (f"waits up to {limit:g}s ([database] statement_lock_timeout)" if limit
             else "no time limit ([database] statement_lock_timeout = 0)")
    next_tell = started
    while found:
        now = time.monotonic()
        if limit and now - started >= limit:
            held = "; ".join(t.text for t in found)
            ends = " ".join(t.end() for t in found)
            raise StillHeld(
                f"{doing} did not start: a transaction older than {age:g}s ([database] "
                f"old_transaction_age) still holds a lock it needs after {limit:g}s: {held}; "
                f"let it finish or end it ({ends}); nothing of it was applied")
        if now >= next_tell:
            tell(f"{doing} waits for a transaction older than {age:g}s ([database] "
                 f"old_transaction_age) before it starts: "
                 f"{'; '.join(t.text for t in found)}; {bound}")
            next_tell = now + interval
        time.sleep(POLL_SECONDS)
        found = find(conn, tables, age)
    tell(f"{doing}: no old transaction holds its tables any more; starting")

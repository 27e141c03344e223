"""A PostgreSQL session advisory lock: one migration runner at a time.

The lock lives in the server, so it covers runners on every node and in
every shell; it belongs to the session, so there is no stale lock file to
clear.  A runner killed by SIGKILL does not release it at once, though:
its backend notices the dropped connection only when its statement ends
(a migration's statement may run on for seconds; about 14 s was seen), and
holds the lock until then; a waiting runner sees the holder in
pg_stat_activity meanwhile.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import LockedError
from ..output import Reporter

# Any fixed bigint, the same in every ivle-maint: 'IVLEMIGR' in ASCII.
LOCK_ID = int.from_bytes(b"IVLEMIGR", "big")
POLL_SECONDS = 0.25


def _try(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
        got: bool = cur.fetchone()[0]
    conn.commit()  # session locks outlive transactions; end this one anyway
    return got


def holder(conn: Any) -> str:
    """Who holds the lock, as far as this role may see: for messages."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT a.pid, a.application_name, a.client_addr, a.backend_start
              FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.classid = (%s >> 32)::oid AND l.objid = (%s & 4294967295)::oid
               AND l.objsubid = 1
            """,
            [LOCK_ID, LOCK_ID],
        )
        row = cur.fetchone()
    conn.commit()
    if row is None:
        return "another runner"
    pid, app, addr, since = row
    who = app or "another runner"
    where = f" from {addr}" if addr else ""
    when = f" since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if since else ""
    return f"{who} (server pid {pid}{where}{when})"


def acquire(conn: Any, *, timeout: float, reporter: Reporter, resume: str | None = None) -> None:
    """Take the lock, waiting up to timeout seconds with one message."""
    if _try(conn):
        return
    who = holder(conn)
    reporter.info(f"waiting up to {timeout:g}s for the migration lock held by {who}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        if _try(conn):
            reporter.info("got the migration lock")
            return
    raise LockedError(
        f"the migration lock is still held by {holder(conn)} after {timeout:g}s "
        "([database] lock_timeout)",
        resume=resume,
    )


def release(conn: Any) -> None:
    if conn.closed:
        return
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])
    conn.commit()

"""Run one classified migration together with its marker row.

Transactional modes: the statements and the marker row in one
transaction, so a failure anywhere leaves neither.  no-transaction: the
statements in autocommit, as psql runs them, then the marker row.

Each migration starts from the session as it connected (reset_session):
what an earlier one SET (search_path, role, a timeout) does not carry
into the next, and the marker row is written with the session's own
search_path and role whatever the migration's statements set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg2

from ..errors import MaintError
from ..gates import waits
from . import marker
from .classify import NO_TRANSACTION, Classified

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    key: str
    mode: str
    seconds: float


def pg_reason(exc: Exception) -> str:
    """The server's one-line message for a failed statement."""
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    return " ".join(text.split())


class Failed(MaintError):
    """A migration that failed; the caller adds the backup and resume advice."""


def _abandon(conn: Any) -> None:
    """Roll back whatever is open, including a file's own BEGIN in autocommit."""
    if conn.closed:
        return
    if conn.autocommit and conn.info.transaction_status != 0:  # 0: TRANSACTION_STATUS_IDLE
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    conn.rollback()
    if conn.autocommit:
        conn.autocommit = False


# DISCARD ALL without pg_advisory_unlock_all(): the migration lock stays.
# RESET ALL returns to the settings sent when connecting (gates/environment).
RESET_SESSION = (
    "CLOSE ALL",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET ALL",
    "RESET ROLE",
    "DEALLOCATE ALL",
    "UNLISTEN *",
    "DISCARD PLANS",
    "DISCARD TEMP",
    "DISCARD SEQUENCES",
)
# Before the marker row, in the migration's own transaction.
MARKER_SESSION = ("RESET search_path", "RESET ROLE")
LOCK_NOT_AVAILABLE = "55P03"


def reset_session(conn: Any) -> None:
    """The session as it connected, but for the session locks it holds."""
    conn.rollback()
    autocommit, conn.autocommit = conn.autocommit, True
    try:
        with conn.cursor() as cur:
            for statement in RESET_SESSION:
                cur.execute(statement)
    finally:
        conn.autocommit = autocommit


def _lock_advice(conn: Any) -> str:
    """Who held the lock a migration gave up waiting for, and what to do."""
    found = waits.last_holders(conn)
    if not found:
        return ("; another session holds a lock it needs: let it finish or end it, or raise "
                "[database] statement_lock_timeout")
    ends = " ".join(f"SELECT pg_terminate_backend({pid});" for pid, _ in found)
    held = "; ".join(text for _, text in found)
    return (f"; it waited for a lock held by {held}: let that finish or end it ({ends}), "
            f"or raise [database] statement_lock_timeout")


def _run_statements(conn: Any, c: Classified) -> None:
    """Execute c's statements; a failure names the file and line."""
    with conn.cursor() as cur:
        for statement in c.statements:
            try:
                cur.execute(statement.text)
            except psycopg2.Error as exc:
                if c.mode == NO_TRANSACTION:
                    effect = (
                        f"{c.key} runs without a transaction ({NO_TRANSACTION}): what ran "
                        "before that line stays applied; finish or undo it by hand"
                    )
                else:
                    effect = f"nothing of {c.key} was applied"
                advice = _lock_advice(conn) if exc.pgcode == LOCK_NOT_AVAILABLE else ""
                raise Failed(
                    f"migration {c.key} failed at {c.migration.path}:{statement.line}: "
                    f"{pg_reason(exc)}; {effect}{advice}"
                ) from None
    for notice in conn.notices:
        log.info("%s: %s", c.key, notice.strip())
    del conn.notices[:]
    if conn.autocommit and conn.info.transaction_status != 0:
        raise Failed(
            f"migration {c.key} left a transaction open (BEGIN without COMMIT); it was rolled back"
        )


def apply(conn: Any, c: Classified, *, host: str, package_version: str | None) -> Applied:
    """Run one migration and write its marker row; raise Failed on failure.

    Transactional modes: statements and marker row in one transaction.
    no-transaction: statements in autocommit, as psql runs them, then the
    marker row in a transaction of its own.
    """
    reset_session(conn)
    for notice in conn.notices:  # said before this migration ran: not its own
        log.info("before %s: %s", c.key, notice.strip())
    del conn.notices[:]
    waits.doing(conn, f"migration {c.key}")
    conn.autocommit = c.mode == NO_TRANSACTION
    started = time.monotonic()
    try:
        _run_statements(conn, c)
        if conn.autocommit:
            conn.autocommit = False  # the marker row gets a transaction of its own
        seconds = time.monotonic() - started
        with conn.cursor() as cur:
            for statement in MARKER_SESSION:  # not what the migration SET
                cur.execute(statement)
            marker.record(
                cur,
                key=c.key,
                filename=c.migration.name,
                checksum=c.checksum,
                mode=c.mode,
                duration=seconds,
                host=host,
                package_version=package_version,
            )
        conn.commit()
    except psycopg2.Error as exc:
        _abandon(conn)
        raise Failed(f"migration {c.key}: recording it failed: {pg_reason(exc)}") from None
    except BaseException:
        _abandon(conn)
        raise
    return Applied(c.key, c.mode, seconds)

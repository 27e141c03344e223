"""Run one classified migration together with its marker row.

Transactional modes: the statements and the marker row in one
transaction, so a failure anywhere leaves neither.  no-transaction: the
statements in autocommit, as psql runs them, then the marker row.

Each migration starts from the session as it connected (reset_session):
what an earlier one SET (search_path, role, a timeout) does not carry
into the next, and the marker row is written with the session's own
search_path and role whatever the migration's statements set.

Lock-safe (db/retry.py's LockPolicy, [database] ddl_*): first, no old
transaction may hold a lock on a table the migration touches
(db/old_transactions.py).  Then each try runs with a short lock_timeout;
a statement that gives way (55P03, lock_not_available) rolls back the
whole transaction, and after a pause the migration runs again from its
first statement.  In no-transaction mode only that statement is tried
again, and only where that is safe: it ran in a transaction of its own
(not inside the file's own BEGIN) that PostgreSQL rolled back whole, and
it is not one that commits on its way (CREATE INDEX CONCURRENTLY can
leave an invalid index behind): those wait up to statement_lock_timeout
in one go, as before.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from ..errors import MaintError
from ..gates import environment, waits
from ..pgdriver import psycopg2
from . import marker, old_transactions, touched_tables
from .classify import NO_TRANSACTION, Classified
from .connect import pg_reason
from .retry import LockPolicy
from .sqlsplit import Statement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    key: str
    mode: str
    seconds: float


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


def _lock_advice(found: list[tuple[int, str]],
                 setting: str = "[database] statement_lock_timeout") -> str:
    """Who held the lock a migration gave up waiting for, and what to do."""
    if not found:
        return (f"; another session holds a lock it needs: let it finish or end it, or raise "
                f"{setting}")
    ends = " ".join(f"SELECT pg_terminate_backend({pid});" for pid, _ in found)
    held = "; ".join(text for _, text in found)
    return (f"; it waited for a lock held by {held}: let that finish or end it ({ends}), "
            f"or raise {setting}")


class GaveWay(Exception):
    """A statement gave way to another session's lock, where trying again is safe."""

    def __init__(self, statement: Statement, reason: str, holders: list[tuple[int, str]],
                 wanted: str) -> None:
        super().__init__(reason)
        self.statement, self.reason, self.holders, self.wanted = (
            statement, reason, holders, wanted)


@dataclass
class _Tries:
    """The tries of one migration (or, in no-transaction mode, of one statement)."""

    c: Classified
    policy: LockPolicy
    tell: Callable[[str], None]
    draw: random.Random
    attempt: int = 1
    first: float = field(default_factory=time.monotonic)

    def gives_up_text(self) -> str:
        return (f"gives way after {self.policy.attempt_timeout():g}s ([database] "
                f"ddl_lock_timeout), attempt {self.attempt} of {self.policy.attempts}")

    def back_off(self, way: GaveWay) -> None:
        """Pause before the next try, telling why; raise Failed when none is left."""
        pause = self.policy.pause(self.attempt, self.draw)
        where = f"{self.c.migration.path}:{way.statement.line}"
        lock = f" ({way.wanted})" if way.wanted else ""
        elapsed = time.monotonic() - self.first
        if self.policy.gives_up(self.attempt, elapsed, pause):
            if self.attempt >= self.policy.attempts:
                bound, setting = f"ddl_retries {self.policy.retries}", "ddl_retries"
            else:  # the next try would start too late
                bound = f"statement_lock_timeout {self.policy.budget:g}s, {elapsed:.0f}s spent"
                setting = "statement_lock_timeout"
            raise Failed(
                f"migration {self.c.key} failed at {where}: {way.reason} on each of "
                f"{self.attempt} tries of {self.policy.attempt_timeout():g}s ([database] "
                f"ddl_lock_timeout; {bound}); {_effect(self.c)}"
                f"{_lock_advice(way.holders, f'[database] {setting}')}") from None
        held = "; ".join(text for _, text in way.holders) or "another session"
        again = "that statement" if self.c.mode == NO_TRANSACTION else "rolled back, all of it"
        self.tell(f"migration {self.c.key} gave way at {where} after "
                  f"{self.policy.attempt_timeout():g}s to a lock{lock} held by {held}; "
                  f"attempt {self.attempt} of {self.policy.attempts}; {again} tried again "
                  f"in {pause:.1f}s")
        time.sleep(pause)
        self.attempt += 1


def _effect(c: Classified) -> str:
    if c.mode == NO_TRANSACTION:
        return (f"{c.key} runs without a transaction ({NO_TRANSACTION}): what ran "
                "before that line stays applied; finish or undo it by hand")
    return f"nothing of {c.key} was applied"


# Statements tried again alone in no-transaction mode must take their locks
# in one transaction PostgreSQL rolls back whole: not these.
_NOT_ALONE = frozenset({"SET", "RESET", "SHOW", "BEGIN", "START", "COMMIT", "END", "ROLLBACK",
                        "ABORT", "SAVEPOINT", "RELEASE", "PREPARE"})


def _retried_alone(conn: Any, c: Classified, statement: Statement) -> bool:
    """In no-transaction mode, whether STATEMENT gives way and is tried again alone."""
    if conn.info.transaction_status != 0:  # inside the file's own BEGIN: all or nothing
        return False
    if any(s.line == statement.line for s, _ in c.nontransactional):
        return False  # commits on its way (CONCURRENTLY, VACUUM): not undone by a rollback
    return bool(statement.head) and statement.head[0] not in _NOT_ALONE


@contextmanager
def _session_lock_timeout(conn: Any, seconds: float) -> Iterator[None]:
    """lock_timeout for one autocommit statement; then what the session had."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('lock_timeout')")
        saved = cur.fetchone()[0]
        cur.execute("SELECT set_config('lock_timeout', %s, false)",
                    [environment.milliseconds(seconds)])
    try:
        yield
    finally:
        if conn.info.transaction_status == 0:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, false)", [saved])


def _failed(c: Classified, statement: Statement, exc: psycopg2.Error, conn: Any) -> Failed:
    advice = _lock_advice(waits.last_holders(conn)) if exc.pgcode == LOCK_NOT_AVAILABLE else ""
    return Failed(f"migration {c.key} failed at {c.migration.path}:{statement.line}: "
                  f"{pg_reason(exc)}; {_effect(c)}{advice}")


def _gave_way(conn: Any, statement: Statement, exc: psycopg2.Error) -> GaveWay:
    return GaveWay(statement, pg_reason(exc), waits.last_holders(conn), waits.last_wanted(conn))


def _run_alone(conn: Any, cur: Any, statement: Statement, tries: _Tries) -> None:
    """One no-transaction statement, tried again alone when it gives way."""
    while True:
        try:
            with waits.short_waits(conn, lock_timeout=tries.policy.attempt_timeout(),
                                   gives_up=tries.gives_up_text()), \
                    _session_lock_timeout(conn, tries.policy.attempt_timeout()):
                cur.execute(statement.text)
            return
        except psycopg2.Error as exc:
            if exc.pgcode != LOCK_NOT_AVAILABLE or conn.info.transaction_status != 0:
                raise _failed(tries.c, statement, exc, conn) from None
            tries.back_off(_gave_way(conn, statement, exc))


def _run_statements(conn: Any, c: Classified, tries: _Tries | None) -> None:
    """Execute c's statements; a failure names the file and line.

    tries: transactional, raise GaveWay on a lock timeout; no-transaction,
    try that statement again where it is safe.  None: one wait each.
    """
    with conn.cursor() as cur:
        for statement in c.statements:
            if tries is not None and c.mode == NO_TRANSACTION \
                    and _retried_alone(conn, c, statement):
                _run_alone(conn, cur, statement, _Tries(c, tries.policy, tries.tell, tries.draw))
                continue
            try:
                cur.execute(statement.text)
            except psycopg2.Error as exc:
                if tries is not None and c.mode != NO_TRANSACTION \
                        and exc.pgcode == LOCK_NOT_AVAILABLE:
                    raise _gave_way(conn, statement, exc) from None
                raise _failed(c, statement, exc, conn) from None
    for notice in conn.notices:
        log.info("%s: %s", c.key, notice.strip())
    del conn.notices[:]
    if conn.autocommit and conn.info.transaction_status != 0:
        raise Failed(
            f"migration {c.key} left a transaction open (BEGIN without COMMIT); it was rolled back"
        )


def apply(conn: Any, c: Classified, *, host: str, package_version: str | None,
          policy: LockPolicy | None = None, tell: Callable[[str], None] | None = None,
          draw: random.Random | None = None,
          class_override: tuple[str, str] | None = None) -> Applied:
    """Run one migration and write its marker row; raise Failed on failure.

    Transactional modes: statements and marker row in one transaction.
    no-transaction: statements in autocommit, as psql runs them, then the
    marker row in a transaction of its own.  policy: how it waits for other
    sessions' locks (none: each statement waits the session's lock_timeout);
    tell: where the waits are told; draw: the jitter's random numbers;
    class_override: (what --accept-class took, who), in the marker row.
    """
    policy = policy or LockPolicy()
    tell = tell or log.info
    reset_session(conn)
    for notice in conn.notices:  # said before this migration ran: not its own
        log.info("before %s: %s", c.key, notice.strip())
    del conn.notices[:]
    waits.doing(conn, f"migration {c.key}")
    if policy.old_age:
        try:
            old_transactions.wait_until_gone(
                conn, doing=f"migration {c.key}", age=policy.old_age, limit=policy.old_wait,
                tables=touched_tables.touched(s.text for s in c.statements),
                tell=tell, interval=policy.tell_interval)
        except old_transactions.StillHeld as exc:
            raise Failed(str(exc)) from None
    if not policy.retrying:
        return _try(conn, c, host=host, package_version=package_version, tries=None,
                    class_override=class_override)
    tries = _Tries(c, policy, tell, draw or random.Random())
    while True:
        try:
            return _try(conn, c, host=host, package_version=package_version, tries=tries,
                        class_override=class_override)
        except GaveWay as way:
            tries.back_off(way)


def _try(conn: Any, c: Classified, *, host: str, package_version: str | None,
         tries: _Tries | None, class_override: tuple[str, str] | None = None) -> Applied:
    """One run of the migration and its marker row; GaveWay: rolled back, try again."""
    reset_session(conn)
    conn.autocommit = c.mode == NO_TRANSACTION
    started = time.monotonic()
    whole = tries if c.mode != NO_TRANSACTION else None  # the try is the transaction
    try:
        if whole is not None:
            with conn.cursor() as cur:  # this transaction's only: gone with its rollback
                cur.execute("SELECT set_config('lock_timeout', %s, true)",
                            [environment.milliseconds(whole.policy.attempt_timeout())])
        with (waits.short_waits(conn, lock_timeout=whole.policy.attempt_timeout(),
                                gives_up=whole.gives_up_text())
              if whole is not None else nullcontext()):
            _run_statements(conn, c, tries)
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
                class_override=class_override,
            )
        conn.commit()
    except psycopg2.Error as exc:
        _abandon(conn)
        raise Failed(f"migration {c.key}: recording it failed: {pg_reason(exc)}") from None
    except BaseException:  # GaveWay too: nothing of this try stays
        _abandon(conn)
        raise
    return Applied(c.key, c.mode, seconds)

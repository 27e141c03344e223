"""A migration's tries, against a fake connection whose statements give way
(lock_not_available) when the test says: fault injection of which
statement gives way in which try (db/apply.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivle_maint.db import apply as applying
from ivle_maint.db.classify import NO_TRANSACTION, TRANSACTION, Classified, nontransactional
from ivle_maint.db.discovery import Migration
from ivle_maint.db.retry import LockPolicy
from ivle_maint.db.sqlsplit import split

KEY = "20100101-01"
IDLE, IN_TRANSACTION, IN_ERROR = 0, 2, 3


class GaveWay(psycopg2.OperationalError):
    pgcode = "55P03"  # lock_not_available, as the server says it

    def __init__(self) -> None:
        super().__init__("canceling statement due to lock timeout")


class Info:
    transaction_status = IDLE
    backend_pid = 4242


class Cursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn, self.rowcount = conn, 1

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> None:
        self.conn.execute(sql)

    def fetchone(self) -> tuple[str]:
        return ("300s",)


class FakeConn:
    """Statements run, committed or rolled back as PostgreSQL would; GIVES_WAY
    decides, per execution of a migration statement, whether it gives way."""

    def __init__(self, gives_way: Callable[[str], bool]) -> None:
        self.gives_way = gives_way
        self.autocommit = False
        self.closed = False
        self.notices: list[str] = []
        self.info = Info()
        self.pending: list[str] = []  # the open transaction's effects
        self.done: list[str] = []  # committed

    def cursor(self) -> Cursor:
        return Cursor(self)

    def execute(self, sql: str) -> None:
        sql = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
        if sql in ("BEGIN;", "COMMIT;"):  # a file's own, in no-transaction mode
            self.info.transaction_status = IN_TRANSACTION if sql == "BEGIN;" else IDLE
            self.done += self.pending if sql == "COMMIT;" else []
            self.pending = []
            return
        ours = sql.startswith(("ALTER", "CREATE", "UPDATE", "INSERT INTO ivle_maint"))
        if ours and not sql.startswith("INSERT") and self.gives_way(sql):
            if self.autocommit and self.info.transaction_status == IDLE:
                raise GaveWay()  # its own transaction, rolled back whole
            self.info.transaction_status = IN_ERROR
            raise GaveWay()
        if not ours:
            return
        if self.autocommit and self.info.transaction_status == IDLE:
            self.done.append(sql)
        else:
            self.info.transaction_status = IN_TRANSACTION
            self.pending.append(sql)

    def commit(self) -> None:
        self.done += self.pending
        self.rollback()

    def rollback(self) -> None:
        self.pending = []
        self.info.transaction_status = IDLE


def classified(text: str, mode: str) -> Classified:
    statements = tuple(split(text))
    refused = tuple((s, why) for s in statements if (why := nontransactional(s)) is not None)
    return Classified(Migration((20100101, 1), KEY, Path(f"/m/{KEY}.sql")), "sum", mode,
                      statements, (), refused)


def run(conn: FakeConn, c: Classified, retries: int) -> tuple[list[str], Exception | None]:
    told: list[str] = []
    policy = LockPolicy(lock_timeout=1, retries=retries, max_pause=0)
    try:
        applying.apply(conn, c, host="h", package_version=None, policy=policy,
                       tell=told.append)
    except applying.Failed as exc:
        return told, exc
    return told, None


def script(outcomes: list[bool]) -> Callable[[str], bool]:
    """Gives way on the Nth execution of the ALTER as OUTCOMES[N] says (then never)."""
    left = list(outcomes)

    def gives_way(sql: str) -> bool:
        return sql.startswith("ALTER") and bool(left) and left.pop(0)
    return gives_way


def leading(outcomes: list[bool]) -> int:
    """How many tries in a row give way first."""
    return next((n for n, way in enumerate(outcomes) if not way), len(outcomes))


TWO = "CREATE TABLE first_t (x int);\nALTER TABLE login ADD COLUMN y int;\n"
MARKER = "INSERT INTO ivle_maint_migrations"


@given(outcomes=st.lists(st.booleans(), max_size=8), retries=st.integers(0, 6))
def test_a_transactional_migration_is_applied_once_or_not_at_all(
        outcomes: list[bool], retries: int) -> None:
    conn = FakeConn(script(outcomes))
    told, failed = run(conn, classified(TWO, TRANSACTION), retries)
    gave_way = leading(outcomes)
    assert (failed is None) is (gave_way <= retries)
    if failed is None:
        assert [s.split(" (")[0] for s in conn.done] == \
            ["CREATE TABLE first_t", "ALTER TABLE login ADD COLUMN y int;", MARKER]
        assert len(told) == gave_way
    else:
        assert conn.done == []  # nothing, not even the CREATE TABLE before it
        assert len(told) == retries and "on each of" in str(failed)
        assert f"nothing of {KEY} was applied" in str(failed)
    assert conn.pending == [] and conn.info.transaction_status == IDLE


@given(outcomes=st.lists(st.booleans(), max_size=8), retries=st.integers(0, 6))
def test_no_transaction_mode_runs_each_statement_once_and_tries_again_only_the_one(
        outcomes: list[bool], retries: int) -> None:
    conn = FakeConn(script(outcomes))
    told, failed = run(conn, classified("-- ivle-maint: no-transaction\n" + TWO,
                                        NO_TRANSACTION), retries)
    assert conn.done[0].startswith("CREATE TABLE first_t")  # ran once, never again
    assert (failed is None) is (leading(outcomes) <= retries)
    if failed is None:
        assert conn.done[1:] == ["ALTER TABLE login ADD COLUMN y int;"] + \
            [s for s in conn.done[2:] if s.startswith(MARKER)]
        assert sum(s.startswith(MARKER) for s in conn.done) == 1
    else:
        assert len(conn.done) == 1 and "stays applied" in str(failed)
    assert all("that statement tried again" in line for line in told)


def test_a_retry_line_names_the_migration_the_line_and_the_attempt() -> None:
    conn = FakeConn(script([True, False]))
    told, failed = run(conn, classified(TWO, TRANSACTION), 3)
    assert failed is None
    [line] = told
    assert line.startswith(f"migration {KEY} gave way at /m/{KEY}.sql:2 after 1s to a lock "
                           "held by another session; attempt 1 of 4; rolled back, all of it "
                           "tried again in 0.0s")


def test_inside_the_files_own_begin_a_statement_is_never_tried_alone() -> None:
    text = ("-- ivle-maint: no-transaction\nBEGIN;\nALTER TABLE login ADD COLUMN y int;\n"
            "COMMIT;\n")
    conn = FakeConn(script([True]))
    told, failed = run(conn, classified(text, NO_TRANSACTION), 5)
    assert told == [] and failed is not None and ":3: canceling statement" in str(failed)


def test_a_statement_that_commits_on_its_way_is_never_tried_again() -> None:
    text = "-- ivle-maint: no-transaction\nCREATE INDEX CONCURRENTLY ix ON login (y);\n"
    conn = FakeConn(lambda sql: sql.startswith("CREATE INDEX"))
    c = classified(text, NO_TRANSACTION)
    assert c.nontransactional
    told, failed = run(conn, c, 5)
    assert told == [] and failed is not None and conn.done == []


@pytest.mark.parametrize("mode", [TRANSACTION, NO_TRANSACTION])
def test_without_ddl_lock_timeout_the_first_lock_timeout_fails(mode: str) -> None:
    conn = FakeConn(script([True]))
    with pytest.raises(applying.Failed, match="canceling statement due to lock timeout"):
        applying.apply(conn, classified(TWO, mode), host="h", package_version=None,
                       policy=LockPolicy(lock_timeout=0, retries=10))

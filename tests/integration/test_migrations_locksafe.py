"""Lock-safe application on a real PostgreSQL: a migration gives way to the
sessions that hold its tables instead of queueing everyone behind it.

No assertion here is on time: what was blocked, applied or told is asked of
PostgreSQL (pg_stat_activity, pg_locks, the catalog) and of the lines told.
A timeout only turns a hang into a failure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.db import migrations, pgparse
from ivle_maint.errors import MaintError
from ivle_maint.output import RecordingReporter
from support.db_site import baselined_site
from support.lock_holders import (
    Migrator,
    in_transaction,
    reader,
    settings_with,
    wait_for,
    xact_age,
)
from support.migration_site import Site

pytestmark = pytest.mark.needs_postgres

KEY = "20100101-01"
ALTER = "ALTER TABLE login ADD COLUMN locked_in int;\n"
# Retries that never run out while a test holds the lock; nothing old waited for.
PATIENT = {"ddl_lock_timeout": 1, "ddl_retries": 1000, "ddl_retry_max_wait": 0.2,
           "statement_lock_timeout": 0, "old_transaction_age": 0, "tell_interval": 0.5}


class Reporter(RecordingReporter):
    def said(self, words: str) -> list[str]:
        return [line for line in self.lines if words in line]


@pytest.fixture
def db(postgres: Any, tmp_path: Any) -> Iterator[Site]:
    """A baselined database with one migration pending that alters login."""
    with baselined_site(postgres, tmp_path) as site:
        site.add_migration(f"{KEY}.sql", ALTER)
        yield site


def blocked_behind(site: Site, pid: int) -> list[Any]:
    """Sessions waiting for a lock that PID holds or waits for ahead of them."""
    return site.query("SELECT pid FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                      [pid])


def test_a_migration_behind_a_reader_gives_way_and_readers_are_not_queued_behind_it(
        db: Site) -> None:
    holder = reader(db)
    held = holder.info.backend_pid
    runner = Migrator(settings_with(db, **PATIENT))
    looper = db.connect()
    looper.autocommit = True
    try:
        runner.start()
        wait_for(lambda: len(runner.said("gave way")) >= 1, "the migration gives way")
        # A third session reads login in a loop across several tries: each
        # SELECT completes while the reader still holds its lock.  Were the
        # ALTER queued for good, the first SELECT behind it would wait until
        # the reader ends (test_without_retries_readers_queue_behind_the_migration).
        seen = len(runner.said("gave way"))
        selects = 0
        with looper.cursor() as cur:
            cur.execute("SET statement_timeout = '60s'")  # a queued SELECT fails, not hangs
            while len(runner.said("gave way")) < seen + 3:
                cur.execute("SELECT count(*) FROM login")
                cur.fetchall()
                selects += 1
                assert runner.is_alive(), runner.error
        assert selects > 0
        assert in_transaction(db, held)  # the reader never let go meanwhile
        assert "locked_in" not in db.columns("login") and KEY not in db.marker()
    finally:
        holder.rollback()
        holder.close()
        looper.close()
    runner.join(60)
    assert runner.error is None, runner.error
    assert [a.key for a in runner.result.applied] == [KEY]
    assert "locked_in" in db.columns("login") and db.marker()[KEY] == "transaction"
    lines = runner.said("gave way")
    assert lines[0].startswith(f"migration {KEY} gave way at {db.migrations / KEY}.sql:1 "
                               "after 1s to a lock")
    assert "attempt 1 of 1001; rolled back, all of it tried again in " in lines[0]
    assert any(f"held by server pid {held} (user {db.pg.ivle_user}" in line
               and "AccessExclusiveLock on login" in line and "SELECT count(*) FROM login"
               in line for line in lines), lines


def test_without_retries_readers_queue_behind_the_migration(db: Site) -> None:
    """The control: ddl_lock_timeout = 0 is one wait, and PostgreSQL then queues
    a later reader behind the waiting ALTER (what the retries prevent)."""
    holder = reader(db)
    runner = Migrator(settings_with(db, **{**PATIENT, "ddl_lock_timeout": 0}))
    looper = db.connect()
    looper.autocommit = True
    try:
        runner.start()
        alter = []

        def alter_waits() -> bool:
            alter[:] = db.query("SELECT pid FROM pg_stat_activity WHERE wait_event_type = "
                                "'Lock' AND query LIKE 'ALTER TABLE login%%' "
                                "AND datname = current_database()")
            return bool(alter)

        wait_for(alter_waits, "the ALTER waits for the reader")
        read = threading.Thread(target=lambda: looper.cursor().execute(
            "SELECT count(*) FROM login"), daemon=True)
        read.start()
        wait_for(lambda: bool(blocked_behind(db, alter[0][0])), "a reader queues behind")
        assert blocked_behind(db, alter[0][0]) == [(looper.info.backend_pid,)]
    finally:
        holder.rollback()
        holder.close()
    runner.join(60)
    read.join(60)
    looper.close()
    assert runner.error is None and "locked_in" in db.columns("login")
    assert not runner.said("gave way")


def test_the_retries_give_up_after_n_in_one_line_with_nothing_applied(db: Site) -> None:
    holder = reader(db)
    held = holder.info.backend_pid
    marker_before = db.marker()
    reporter = Reporter()
    try:
        with pytest.raises(MaintError) as info:
            migrations.apply_migrations(settings_with(db, **{
                **PATIENT, "ddl_lock_timeout": 0.3, "ddl_retries": 2}), reporter)
    finally:
        holder.rollback()
        holder.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"migration {KEY} failed at {db.migrations / KEY}.sql:1: "
                              "canceling statement due to lock timeout on each of 3 tries "
                              "of 0.3s ([database] ddl_lock_timeout; ddl_retries 2); ")
    assert f"nothing of {KEY} was applied" in message
    assert f"SELECT pg_terminate_backend({held});" in message \
        or "another session holds a lock it needs" in message
    assert [line.split("; ")[-2] for line in reporter.said("gave way")] == \
        ["attempt 1 of 3", "attempt 2 of 3"]
    assert db.marker() == marker_before and "locked_in" not in db.columns("login")


NO_TRANSACTION = """\
-- ivle-maint: no-transaction
CREATE TABLE nt_first (x int);
ALTER TABLE login ADD COLUMN nt int;
INSERT INTO nt_first VALUES (1);
"""


def test_no_transaction_mode_tries_again_only_the_statement_that_gave_way(db: Site) -> None:
    (db.migrations / f"{KEY}.sql").unlink()
    db.add_migration(f"{KEY}.sql", NO_TRANSACTION)
    holder = reader(db)
    runner = Migrator(settings_with(db, **{**PATIENT, "ddl_lock_timeout": 0.3}))
    try:
        runner.start()
        wait_for(lambda: len(runner.said("gave way")) >= 2, "the ALTER gives way twice")
        assert db.table_exists("nt_first")  # the statement before it ran, and stays
    finally:
        holder.rollback()
        holder.close()
    runner.join(60)
    assert runner.error is None, runner.error  # CREATE TABLE never ran twice
    assert all(f"{KEY}.sql:3 " in line and "that statement tried again" in line
               for line in runner.said("gave way"))
    assert "nt" in db.columns("login") and db.query("SELECT x FROM nt_first") == [(1,)]
    assert db.marker()[KEY] == "no-transaction"


# -- old transactions ---------------------------------------------------------------


def aged(site: Site, conn: Any, age: float) -> None:
    """Wait until CONN's transaction is older than AGE seconds, by the server's clock."""
    wait_for(lambda: xact_age(site, conn.info.backend_pid) > age, "the transaction ages")


def test_an_old_transaction_on_its_table_is_named_and_waited_for_before_it_starts(
        db: Site) -> None:
    holder = reader(db)
    held = holder.info.backend_pid
    aged(db, holder, 1)
    runner = Migrator(settings_with(db, **{**PATIENT, "old_transaction_age": 1}))
    try:
        runner.start()
        wait_for(lambda: len(runner.said("waits for a transaction older than 1s")) >= 2,
                 "the wait is told, and told again")
        line = runner.said("waits for a transaction older than 1s")[0]
        assert line.startswith(f"migration {KEY} waits for a transaction older than 1s "
                               "([database] old_transaction_age) before it starts: server "
                               f"pid {held} (user {db.pg.ivle_user}")
        assert "SELECT count(*) FROM login) holds a lock on login" in line
        assert line.endswith("no time limit ([database] statement_lock_timeout = 0)")
        # It has not started: nothing tried, nothing queued behind it.
        assert not runner.said("gave way")
        assert not db.query("SELECT pid FROM pg_stat_activity WHERE query LIKE "
                            "'ALTER TABLE login%%' AND datname = current_database()")
    finally:
        holder.rollback()
        holder.close()
    runner.join(60)
    assert runner.error is None, runner.error
    assert "locked_in" in db.columns("login")


@pytest.mark.skipif(not pgparse.available(), reason="without pglast every table counts")
def test_an_old_transaction_on_another_table_does_not_hold_it_up(db: Site) -> None:
    holder = reader(db, "subject")
    aged(db, holder, 1)
    reporter = Reporter()
    try:  # a limit, so that waiting for the wrong table fails instead of hanging
        done = migrations.apply_migrations(settings_with(db, **{
            **PATIENT, "old_transaction_age": 1, "statement_lock_timeout": 5}), reporter)
        assert in_transaction(db, holder.info.backend_pid)
    finally:
        holder.rollback()
        holder.close()
    assert [a.key for a in done.applied] == [KEY]
    assert not reporter.said("waits for a transaction")


def test_an_old_transaction_that_never_ends_fails_in_one_line(db: Site) -> None:
    holder = reader(db)
    held = holder.info.backend_pid
    aged(db, holder, 0.5)
    marker_before = db.marker()
    try:
        with pytest.raises(MaintError) as info:
            migrations.apply_migrations(settings_with(db, **{
                **PATIENT, "old_transaction_age": 0.5, "statement_lock_timeout": 1}),
                RecordingReporter())
    finally:
        holder.rollback()
        holder.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"migration {KEY} did not start: a transaction older than 0.5s "
                              "([database] old_transaction_age) still holds a lock it needs "
                              f"after 1s: server pid {held} ")
    assert f"SELECT pg_terminate_backend({held});" in message
    assert db.marker() == marker_before and "locked_in" not in db.columns("login")


# -- fault injection: whatever the order, applied once or not at all -----------------

TWO_TABLES = "CREATE TABLE hyp_first (x int);\nALTER TABLE login ADD COLUMN hyp int;\n"


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hold=st.floats(min_value=0, max_value=1.5), retries=st.integers(min_value=0, max_value=4))
def test_whatever_the_hold_and_the_retries_a_migration_is_applied_once_or_not_at_all(
        db: Site, hold: float, retries: int) -> None:
    """A reader holds login for HOLD seconds (a timer ends it) while a migration
    that first creates a table, then alters login, tries RETRIES + 1 times."""
    (db.migrations / f"{KEY}.sql").write_text(TWO_TABLES)
    holder = reader(db)
    release = threading.Timer(hold, holder.rollback)
    release.start()
    try:
        outcome: Any = migrations.apply_migrations(settings_with(db, **{
            **PATIENT, "ddl_lock_timeout": 0.2, "ddl_retries": retries}), RecordingReporter())
    except MaintError as exc:
        outcome = exc
    finally:
        release.join()
        holder.close()
    applied = not isinstance(outcome, MaintError)
    if not applied:
        assert "lock timeout" in str(outcome) and f"nothing of {KEY}" in str(outcome)
    assert (KEY in db.marker()) is applied
    assert db.table_exists("hyp_first") is applied  # the first statement rolled back with it
    assert ("hyp" in db.columns("login")) is applied
    if applied:  # the next example starts again from nothing applied
        db.run_sql(f"DROP TABLE hyp_first; ALTER TABLE login DROP COLUMN hyp; "
                   f"DELETE FROM ivle_maint_migrations WHERE key = '{KEY}';")


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seconds=st.floats(min_value=1e-9, max_value=0.000499),
       which=st.sampled_from(["ddl_lock_timeout", "statement_lock_timeout",
                              "statement_lock_timeout alone"]),
       no_transaction=st.booleans())
def test_a_lock_wait_of_under_a_millisecond_is_a_short_wait_never_none(
        db: Site, seconds: float, which: str, no_transaction: bool) -> None:
    """A positive wait of less than half a millisecond was sent to
    PostgreSQL as round(ms) = 0, which there means no limit: the ALTER
    behind a reader waited for ever, every later reader of the table queued
    behind it.  Every seconds -> milliseconds goes through
    environment.milliseconds: at least 1 ms, so it gives way at once."""
    text = f"-- ivle-maint: no-transaction\n{ALTER}" if no_transaction else ALTER
    (db.migrations / f"{KEY}.sql").write_text(text)
    database: dict[str, object] = {**PATIENT, "ddl_retries": 0}
    if which == "ddl_lock_timeout":
        database["ddl_lock_timeout"] = seconds
    else:  # the budget bounds each try; alone: one wait of the session's lock_timeout
        database["statement_lock_timeout"] = seconds
        database["ddl_lock_timeout"] = 0 if which.endswith("alone") else 2
    holder = reader(db)
    runner = Migrator(settings_with(db, **database))
    try:
        runner.start()
        # The bound only turns the old hang into a failure.
        wait_for(lambda: not runner.is_alive(), "the migration gives up", timeout=30)
    finally:
        holder.rollback()
        holder.close()
        runner.join(60)
    assert isinstance(runner.error, MaintError), runner.error
    assert "lock timeout" in str(runner.error) and "\n" not in str(runner.error)
    assert KEY not in db.marker() and "locked_in" not in db.columns("login")

"""The roll's two tables (cluster/roll.py) on a real PostgreSQL server.

The decision for a release is made once however many nodes decide at the
same moment, and every node reads the same one; at most [cluster]
roll_batch slaves hold a slot however many ask at once (separate
processes, each its own connection, released together by a barrier); a
row written with IVLE's database login that ivle-maint would not write is
one line naming the statement that removes it, never a traceback and never
taken; a role without the rights is told the GRANT by the preflight's
proof.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import roll, table
from ivle_maint.errors import MaintError
from support.migration_site import Site

pytestmark = [pytest.mark.needs_postgres]

FORK = multiprocessing.get_context("fork")  # children inherit the site, no pickling
WAIT = 120.0  # seconds a child may take before the test gives up on it (a hang, not a timing)


def _ensured(site: Site) -> None:
    conn = site.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {table.ROLLS}")
            cur.execute(f"DELETE FROM {table.SLOTS}")
    finally:
        conn.close()


def _in_processes(site: Site, work: Any, count: int) -> list[Any]:
    """WORK(conn, i) in COUNT processes at once, each its own connection;
    what each returned (or the repr of what it raised), by i."""
    barrier, results = FORK.Barrier(count), FORK.Queue()

    def child(i: int) -> None:
        try:
            conn = site.connect()
            try:
                barrier.wait(WAIT)
                results.put((i, work(conn, i)))
            finally:
                conn.close()
        except BaseException as exc:  # reported to the parent, which fails on it
            results.put((i, f"raised {exc!r}"))

    procs = [FORK.Process(target=child, args=(i,)) for i in range(count)]
    for proc in procs:
        proc.start()
    found = dict(results.get(timeout=WAIT) for _ in procs)
    for proc in procs:
        proc.join(WAIT)
    return [found[i] for i in range(count)]


def _decide(conn: Any, i: int) -> tuple[Any, ...]:
    record = roll.decide_once(conn, target="1.1", old="1.0", rolling=i % 2 == 0,
                              why=f"decided by the node of rank {i}", by=f"node{i}")
    return dataclasses.astuple(record)


def test_the_first_decision_stands_and_every_node_reads_it(site: Site) -> None:
    _ensured(site)
    for _ in range(3):  # a few races, each on an empty table
        _ensured(site)
        answers = _in_processes(site, _decide, 8)
        assert all(isinstance(a, tuple) for a in answers), answers
        assert len(set(answers)) == 1, answers  # one decision, read by all
        target, old, rolling, why, by, _at = answers[0]
        rank = int(by.removeprefix("node"))
        assert (target, old, rolling, why) == ("1.1", "1.0", rank % 2 == 0,
                                               f"decided by the node of rank {rank}")
        conn = site.connect()
        try:
            assert dataclasses.astuple(roll.decision(conn, "1.1")) == answers[0]
            assert site.query(f"SELECT count(*) FROM {table.ROLLS}") == [(1,)]
            assert roll.decision(conn, "1.2") is None
            assert roll.forget(conn, "1.1") and not roll.forget(conn, "1.1")
            assert roll.decision(conn, "1.1") is None
            mine = roll.decide_once(conn, target="1.1", old="1.0", rolling=False, why="again",
                                    by="master")
            assert (mine.rolling, mine.why, mine.decided_by) == (False, "again", "master")
        finally:
            conn.close()


def _take(batch: int) -> Any:
    def take(conn: Any, i: int) -> tuple[bool, tuple[str, ...]]:
        slot = roll.take_slot(conn, target="2.0", node=f"slave{i}", batch=batch)
        return slot.taken, slot.holders
    return take


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 4), takers=st.integers(1, 8))
def test_concurrent_takers_never_hold_more_slots_than_the_batch(
        site: Site, batch: int, takers: int) -> None:
    _ensured(site)
    answers = _in_processes(site, _take(batch), takers)
    assert all(isinstance(a, tuple) for a in answers), answers
    taken = {f"slave{i}" for i, (got, _) in enumerate(answers) if got}
    assert len(taken) == min(batch, takers), answers
    for i, (got, holders) in enumerate(answers):
        assert len(holders) <= batch and (f"slave{i}" in holders) == got, answers
    conn = site.connect()
    try:
        assert set(roll.slot_holders(conn, "2.0")) == taken
        assert roll.slot_holders(conn, "2.1") == ()
        for i in range(takers):  # again, one by one: a rerun keeps its slot, no one gains one
            again = roll.take_slot(conn, target="2.0", node=f"slave{i}", batch=batch)
            assert again == roll.Slot(f"slave{i}" in taken, tuple(sorted(taken)))
        waiting = sorted({f"slave{i}" for i in range(takers)} - taken)
        freed = sorted(taken)[0]
        assert roll.release_slot(conn, target="2.0", node=freed)
        assert not roll.release_slot(conn, target="2.0", node=freed)
        assert set(roll.slot_holders(conn, "2.0")) == taken - {freed}
        if waiting:  # the freed slot is one slot: one more slave takes it, the next waits
            assert roll.take_slot(conn, target="2.0", node=waiting[0], batch=batch).taken
            if len(waiting) > 1:
                assert not roll.take_slot(conn, target="2.0", node=waiting[1],
                                          batch=batch).taken
    finally:
        conn.close()


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=20)
ODD = st.sampled_from(["\n", "\r", "\x1b[2J", "\x7f", "\u2028", "\u200b", "\t", "\x85"])
UNPRINTABLE = st.builds(lambda a, odd, b: a + odd + b, TEXT, ODD, TEXT)
HUGE = st.sampled_from([10**3 + 1, 10**5, 2 * 10**6]).map(lambda n: "x" * n)
BAD_VERSIONS = (st.sampled_from(["", "none", "-1", "1.0-", "1::2", "1.1\n", "a1", "1 0",
                                 "1." + "1" * 200]) | UNPRINTABLE | TEXT).filter(
    lambda t: not table._is_version(t))
BAD_NAMES = st.sampled_from(["", "a b", "x" * 254]) | UNPRINTABLE | HUGE
# A slot's node is in its primary key: an index entry holds about 8 kB
# (compressed), so no longer name can be written there at all.
BAD_KEYS = st.sampled_from(["", "a b", "x" * 254, "x" * 10**5]) | UNPRINTABLE
BAD_TIMES = st.sampled_from(["infinity", "-infinity", "10000-01-01 00:00+00",
                             "0044-03-15 12:00+00 BC", "294275-06-01 00:00+00"])
DAMAGE = st.one_of(
    st.tuples(st.just("old"), BAD_VERSIONS),
    st.tuples(st.just("why"), UNPRINTABLE | HUGE | st.just("")),
    st.tuples(st.just("decided_by"), BAD_NAMES),
    st.tuples(st.just("decided_at"), BAD_TIMES),
)


def _one_line(message: str, table_name: str) -> str:
    """The fix MESSAGE names, once it is checked to be one printable line."""
    assert message.isprintable() and len(message) < 3000, message
    assert table_name in message, message
    fix = re.search(r"fix: (DELETE FROM .*), then run again$", message)
    assert fix, message
    return fix.group(1)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_a_decision_ivle_maint_would_not_write_is_one_line_and_never_taken(
        site: Site, damage: tuple[str, str]) -> None:
    _ensured(site)
    column, value = damage
    row = {"target": "1.1", "old": "1.0", "rolling": True, "why": "additive",
           "decided_by": "slave1", "decided_at": "now", column: value}
    site.query(f"INSERT INTO {table.ROLLS} ({', '.join(row)}) "  # with IVLE's login
               f"VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))
    conn = site.connect()
    try:
        with pytest.raises(MaintError) as refused:
            roll.decision(conn, "1.1")
        fix = _one_line(str(refused.value), table.ROLLS)
        with pytest.raises(MaintError) as again:  # a node deciding is not given it either
            roll.decide_once(conn, target="1.1", old="1.0", rolling=False, why="not additive",
                             by="master")
        assert str(again.value) == str(refused.value)
        site.query(fix)  # as the message says
        mine = roll.decide_once(conn, target="1.1", old="1.0", rolling=False,
                                why="not additive", by="master")
        assert (mine.rolling, mine.decided_by) == (False, "master")
    finally:
        conn.close()


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=BAD_KEYS, good=st.lists(st.sampled_from(["slave1", "it's", "web-2"]),
                                    unique=True, max_size=2))
def test_a_slot_ivle_maint_would_not_write_is_one_line_and_removed_as_it_says(
        site: Site, bad: str, good: list[str]) -> None:
    _ensured(site)
    for node in [*good, bad]:
        site.query(f"INSERT INTO {table.SLOTS} (target, node) VALUES ('2.0', %s)", [node])
    conn = site.connect()
    try:
        with pytest.raises(MaintError) as refused:
            roll.take_slot(conn, target="2.0", node="slave9", batch=5)
        fix = _one_line(str(refused.value), table.SLOTS)
        with pytest.raises(MaintError):
            roll.slot_holders(conn, "2.0")
        site.query(fix)
        assert roll.slot_holders(conn, "2.0") == tuple(sorted(good))  # only the bad one went
        assert roll.take_slot(conn, target="2.0", node="slave9", batch=5).taken
    finally:
        conn.close()


def test_a_role_without_the_rights_is_told_the_grant(site: Site) -> None:
    owner = site.pg.connect(site.dbname)  # the superuser creates the tables, grants nothing
    ivle = site.connect()
    try:
        table.ensure(owner)
        assert roll.why_no_roll(owner) is None
        told = roll.why_no_roll(ivle)
        assert told is not None and "\n" not in told
        grant = f"GRANT SELECT, INSERT, DELETE ON {table.ROLLS} TO {site.pg.ivle_user}"
        assert told.endswith(grant), told
        with owner, owner.cursor() as cur:
            cur.execute(grant)
        told = roll.why_no_roll(ivle)
        assert told is not None and told.endswith(grant.replace(table.ROLLS, table.SLOTS))
        with owner, owner.cursor() as cur:
            cur.execute(grant.replace(table.ROLLS, table.SLOTS))
        assert roll.why_no_roll(ivle) is None
        assert site.query(f"SELECT count(*) FROM {table.ROLLS}") == [(0,)]  # tried, rolled back
        assert roll.take_slot(ivle, target="1.1", node="slave1", batch=1).taken
    finally:
        ivle.close()
        owner.close()


def test_tables_a_superuser_creates_are_granted_to_ivles_login(site: Site) -> None:
    owner = site.pg.connect(site.dbname)
    ivle = site.connect()
    try:
        table.ensure(owner, grantee=site.pg.ivle_user)
        assert roll.why_no_roll(ivle) is None
    finally:
        ivle.close()
        owner.close()


def test_an_older_sites_tables_gain_the_roll_tables(site: Site) -> None:
    site.run_sql(f"""
        CREATE TABLE {table.NODES} (name text PRIMARY KEY, role text NOT NULL,
            host text NOT NULL, instance text NOT NULL, version text, serving text,
            target text, phase text NOT NULL, step text, media text, note text,
            last_seen timestamptz NOT NULL DEFAULT now());
        CREATE TABLE {table.MEDIA} (value text PRIMARY KEY, version text NOT NULL,
            chosen_by text NOT NULL, chosen_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO {table.MEDIA} (value, version, chosen_by) VALUES ('1.0', '1.0', 's1');
    """)
    conn = site.connect()
    try:
        assert roll.decision(conn, "1.1") is None and roll.slot_holders(conn, "1.1") == ()
        assert "does not exist" in (roll.why_no_roll(conn) or "")
        table.ensure(conn)
        assert roll.why_no_roll(conn) is None
        assert table.media_values(conn) == [("1.0", "1.0")]
        assert roll.take_slot(conn, target="1.1", node="slave1", batch=1).taken
    finally:
        conn.close()


def test_a_session_whose_role_defaults_to_repeatable_read_still_counts_every_holder(
        site: Site) -> None:
    """default_transaction_isolation is the role's own to set (ALTER ROLE
    ... SET): take_slot's count must still see a holder that committed
    while it waited for the lock."""
    _ensured(site)
    first = site.connect()
    try:
        with first, first.cursor() as cur:
            cur.execute("SET default_transaction_isolation = 'repeatable read'")
        with first, first.cursor() as cur:  # holds the lock, as a taker between count and insert
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [roll.ROLL_SLOT_LOCK])
            cur.execute(f"INSERT INTO {table.SLOTS} (target, node) VALUES ('2.0', 'slave1')")
            waiter, results = _start_taker(site, "slave2")
            _wait_until_blocked(site)
        assert results.get(timeout=WAIT) == (False, ("slave1",))
        waiter.join(WAIT)
    finally:
        first.close()


def test_a_node_deciding_under_repeatable_read_reads_the_decision_that_stood_first(
        site: Site) -> None:
    """As above, for the decision: a node's INSERT that waited for another
    node's uncommitted decision of the same target reads that one (under
    REPEATABLE READ it failed: could not serialize access)."""
    _ensured(site)
    first = site.connect()
    try:
        with first, first.cursor() as cur:  # a node's decision, not committed yet
            cur.execute(f"INSERT INTO {table.ROLLS} (target, old, rolling, why, decided_by) "
                        "VALUES ('1.1', '1.0', true, 'additive', 'slave1')")
            waiter, results = _start_child(site, lambda conn: dataclasses.astuple(
                roll.decide_once(conn, target="1.1", old="1.0", rolling=False, why="not",
                                 by="slave2"))[:5])
            _wait_until_blocked(site, "transactionid")
        assert results.get(timeout=WAIT) == ("1.1", "1.0", True, "additive", "slave1")
        waiter.join(WAIT)
    finally:
        first.close()


def _start_taker(site: Site, node: str) -> tuple[Any, Any]:
    def take(conn: Any) -> tuple[bool, tuple[str, ...]]:
        slot = roll.take_slot(conn, target="2.0", node=node, batch=1)
        return slot.taken, slot.holders
    return _start_child(site, take)


def _start_child(site: Site, work: Any) -> tuple[Any, Any]:
    """WORK(conn) in a process whose session defaults to REPEATABLE READ."""
    results = FORK.Queue()

    def child() -> None:
        conn = site.connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SET default_transaction_isolation = 'repeatable read'")
            results.put(work(conn))
        except BaseException as exc:
            results.put(f"raised {exc!r}")
        finally:
            conn.close()

    proc = FORK.Process(target=child)
    proc.start()
    return proc, results


def _wait_until_blocked(site: Site, kind: str = "advisory") -> None:
    """Until a session waits for a lock of KIND (pg_locks; the slot lock
    when advisory): no sleep decides."""
    probe = site.pg.connect(site.dbname)
    probe.autocommit = True
    try:
        with probe.cursor() as cur:
            for _ in range(100_000):
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = %s AND NOT granted "
                            "AND (locktype <> 'advisory' OR "
                            "((classid::bigint << 32) | objid::bigint) = %s)",
                            [kind, roll.ROLL_SLOT_LOCK])
                if cur.fetchone()[0]:
                    return
                cur.execute("SELECT pg_sleep(0.01)")
        raise AssertionError(f"no session ever waited for a lock ({kind})")
    finally:
        probe.close()


def test_a_forgotten_node_holds_no_slot(site: Site) -> None:
    """A slave whose upgrade failed keeps its slot (the roll stops there);
    once forgotten (`cluster forget --force`), it holds none."""
    _ensured(site)
    conn = site.connect()
    try:
        table.upsert(conn, {"name": "slave1", "role": "slave", "host": "h", "instance": "i",
                            "version": "1.0", "target": "1.1", "phase": "failed"})
        for node in ("slave1", "slave2"):
            assert roll.take_slot(conn, target="1.1", node=node, batch=2).taken
        assert not roll.take_slot(conn, target="1.1", node="slave3", batch=2).taken
        assert table.forget(conn, "slave1")
        assert roll.slot_holders(conn, "1.1") == ("slave2",)
        assert roll.take_slot(conn, target="1.1", node="slave3", batch=2).taken
    finally:
        conn.close()

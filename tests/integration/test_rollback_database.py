"""A full rollback's database half (rollback/database.py) on the sandbox's server:
restore into a new database, the differences a swap would make, the swap
and its rerun after a kill, the failed databases kept and dropped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql

from ivle_maint.db import backup
from ivle_maint.db.connect import ConnectParams, connect
from ivle_maint.errors import MaintError
from ivle_maint.gates import environment
from ivle_maint.output import RecordingReporter
from ivle_maint.rollback import database, differences
from ivle_maint.rollback.database import TableDifference
from ivle_sandbox import schema

pytestmark = pytest.mark.needs_postgres

REPO = Path(__file__).resolve().parents[2]

# What IVLE's schema has and pg_restore --clean trips over: a function that
# depends on a table (its row type), a view, a trigger; plus a table without
# a primary key and ivle-maint's own marker table.
EXTRAS = """
CREATE FUNCTION enabled_logins() RETURNS SETOF login LANGUAGE sql STABLE
    AS $$ SELECT * FROM login WHERE state = 'enabled' $$;
CREATE VIEW enrolled AS SELECT l.login, e.offeringid FROM login l JOIN enrolment e USING (loginid);
CREATE FUNCTION lower_nick() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN NEW.nick := lower(NEW.nick); RETURN NEW; END $$;
CREATE TRIGGER login_nick BEFORE INSERT ON login FOR EACH ROW EXECUTE FUNCTION lower_nick();
CREATE TABLE note (body text, stars int);
INSERT INTO note VALUES ('same', 1), ('same', 1), (E'quote '' back\\\\ tab\t', 2), (NULL, NULL);
CREATE TABLE shape (doc json, at point);  -- types without a hash function
INSERT INTO shape VALUES ('{"a": 1}', '(1,2)'), ('{"a": 1}', '(1,2)');
CREATE TABLE ivle_maint_migrations (key text PRIMARY KEY, applied_at timestamptz);
INSERT INTO ivle_maint_migrations VALUES ('20090101-01', '2009-01-01');
"""


# -- fixtures ------------------------------------------------------------------


class Server:
    """The sandbox's server as a rollback sees it: connect_as = postgres."""

    def __init__(self, pg: Any) -> None:
        self.pg = pg
        self.made: list[str] = []

    def params(self, dbname: str) -> ConnectParams:
        return ConnectParams(dbname, str(self.pg.socket_dir), self.pg.port, "postgres", None,
                             "postgres", environment.session_options("public", 30, 0))

    def ivle_params(self, dbname: str) -> ConnectParams:
        """Who a rollback restores as: ivle.conf's login (restore.fill_params)."""
        pg = self.pg
        return ConnectParams(dbname, "127.0.0.1", pg.port, pg.ivle_user, pg.ivle_password,
                             options=environment.session_options("public", 30, 0))

    def name(self, tag: str) -> str:
        name = f"rb_{tag}_{uuid.uuid4().hex[:8]}"
        self.made.append(name)
        return name

    def ivle_db(self, users: int = 20, extras: str = EXTRAS) -> str:
        name = self.name("live")
        schema.create_database(self.pg, name, users=users)
        self.run(name, extras)
        return name

    def run(self, dbname: str, text: str, params: Any = None) -> None:
        conn = self.pg.connect(dbname, self.pg.ivle_user)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(text, params)
        finally:
            conn.close()

    def query(self, dbname: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        conn = self.pg.connect(dbname)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(text, params)
                return cur.fetchall()
        finally:
            conn.close()

    def databases(self) -> set[str]:
        return {row[0] for row in self.query("postgres", "SELECT datname FROM pg_database")}

    def counts(self, dbname: str) -> dict[str, int]:
        """Rows per table, counted without the code under test."""
        tables = self.query(dbname, "SELECT schemaname, tablename FROM pg_tables "
                                    "WHERE schemaname = 'public'")
        conn = self.pg.connect(dbname)
        try:
            with conn.cursor() as cur:
                found = {}
                for schema_name, table in tables:
                    cur.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(schema_name), sql.Identifier(table)))
                    found[table] = cur.fetchone()[0]
                return found
        finally:
            conn.close()

    def dump(self, dbname: str, directory: Path) -> Path:
        """A dump as ivle-maint takes it before migrating."""
        return backup.dump(self.params(dbname), directory, label="test", keep=50)


@pytest.fixture(scope="module")
def server(postgres: Any) -> Iterator[Server]:
    s = Server(postgres)
    yield s
    for name in s.made:
        schema.drop_database(postgres, name)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rollback") / "backups"
    return directory


def lines_of(found: list[TableDifference]) -> dict[str, tuple[int, int]]:
    return {d.name: (d.only_in_live, d.only_in_restored) for d in found}


# -- restore_copy ----------------------------------------------------------------


def test_restore_copy_gives_an_equal_database(server: Server, dumps: Path) -> None:
    live = server.ivle_db()
    taken = server.dump(live, dumps)
    copy = server.name("copy")
    database.restore_copy(server.params(live), taken, copy, jobs=2,
                          fill_as=server.ivle_params(live))
    assert database.differences(server.params(live), live, copy) == []
    assert server.counts(copy) == server.counts(live)
    assert server.counts(copy)["note"] == 4 and server.counts(copy)["login"] == 20
    # The function that depends on a table came back, and works; owner and
    # encoding are the live database's.
    assert server.query(copy, "SELECT count(*) FROM enabled_logins()") == [(20,)]
    props = "SELECT pg_get_userbyid(datdba), encoding, datcollate FROM pg_database " \
            "WHERE datname = %s"
    assert server.query("postgres", props, [copy])[0] == server.query("postgres", props, [live])[0]
    # The private copy of the dump pg_restore read is gone.
    assert not list(Path(os.environ["TMPDIR"]).glob("ivle-maint-restore-*"))


def test_restore_copy_refuses_an_existing_name_and_a_missing_createdb(
        server: Server, dumps: Path) -> None:
    live = server.ivle_db(users=1)
    taken = server.dump(live, dumps)
    with pytest.raises(MaintError, match="already exists"):
        database.restore_copy(server.params(live), taken, live,
                              fill_as=server.ivle_params(live))
    pg = server.pg
    ivle = ConnectParams(live, "127.0.0.1", pg.port, pg.ivle_user, pg.ivle_password,
                         options=environment.session_options("public", 30, 0))
    target = server.name("nocreatedb")
    with pytest.raises(MaintError, match=r"CREATEDB.*connect_as = postgres") as caught:
        database.restore_copy(ivle, taken, target, fill_as=ivle)
    assert "\n" not in str(caught.value) and pg.ivle_password not in str(caught.value)
    assert target not in server.databases()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_failed_restore_leaves_no_database(server: Server, dumps: Path, damage: str,
                                             tmp_path: Path) -> None:
    live = server.ivle_db()
    taken = server.dump(live, dumps)
    bad = tmp_path / "bad.dump"
    data = taken.read_bytes()
    bad.write_bytes(b"PGDMP not really" * 64 if damage == "garbage" else data[:len(data) * 2 // 3])
    bad.chmod(0o600)
    target = server.name("bad")
    with pytest.raises(MaintError) as caught:
        database.restore_copy(server.params(live), bad, target, jobs=2,
                              fill_as=server.ivle_params(live))
    message = str(caught.value)
    assert "\n" not in message and "pg_restore of" in message and "dropped" in message
    assert target not in server.databases()


# slow_ok is quick while the rows go in, then sleeps: restoring them is slow.
SLOW_EXTRAS = """
CREATE FUNCTION slow_ok(int) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE TABLE slow (n int CHECK (slow_ok(n)));
INSERT INTO slow SELECT generate_series(1, 100);
CREATE OR REPLACE FUNCTION slow_ok(int) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN true; END $$;
"""


def test_an_interrupted_restore_leaves_no_database(server: Server, dumps: Path) -> None:
    """SIGINT while pg_restore copies rows (a CHECK makes each row take 0.05 s)."""
    live = server.ivle_db(users=2, extras=SLOW_EXTRAS)
    taken = server.dump(live, dumps)
    target = server.name("interrupted")
    copying = threading.Event()

    def interrupt_when_copying() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = server.query("postgres", "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = %s AND query ILIKE 'COPY%%'", [target])
            if rows[0][0]:
                copying.set()
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=interrupt_when_copying)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            database.restore_copy(server.params(live), taken, target, jobs=2,
                                  fill_as=server.ivle_params(live))
    finally:
        watcher.join()
    assert copying.is_set()
    assert target not in server.databases()
    leftover = subprocess.run(["pgrep", "-f", f"pg_restore.*{target}"], check=False,
                              capture_output=True)
    assert leftover.returncode == 1, leftover.stdout


# -- differences -----------------------------------------------------------------

# Three tables: a primary key, none (rows may repeat), a primary key and jsonb.
MODEL_SCHEMA = """
CREATE TABLE a (id int PRIMARY KEY, v text);
CREATE TABLE b (k text, n int);
CREATE TABLE c (id int PRIMARY KEY, doc jsonb);
"""
START: dict[str, list[tuple[Any, ...]]] = {
    "a": [(i, f"a{i}") for i in range(1, 6)],
    "b": [("x", 1), ("x", 1), ("y", 2)],
    "c": [(i, f'{{"n": {i}}}') for i in range(1, 4)],
}
texts = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FFF),  # no NUL, no surrogate
                max_size=6)
operations = st.lists(st.tuples(st.sampled_from(["insert", "update", "delete"]),
                                st.sampled_from(sorted(START)), st.integers(0, 30), texts),
                      max_size=12)


def reset(cur: Any) -> None:
    cur.execute("TRUNCATE a, b, c")
    for row in START["a"]:
        cur.execute("INSERT INTO a VALUES (%s, %s)", row)
    for row in START["b"]:
        cur.execute("INSERT INTO b VALUES (%s, %s)", row)
    for row in START["c"]:
        cur.execute("INSERT INTO c VALUES (%s, %s::jsonb)", row)


def rows_of(cur: Any, table: str) -> list[tuple[Any, ...]]:
    """TABLE's rows as hashable tuples, each with its ctid last."""
    cur.execute(sql.SQL("SELECT *, ctid FROM {} ORDER BY ctid").format(sql.Identifier(table)))
    return [tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in row)
            for row in cur.fetchall()]


def apply(cur: Any, op: str, table: str, number: int, text: str) -> None:
    """One operation on the live database (the model is read back from the tables)."""
    rows = rows_of(cur, table)
    if op == "insert":
        if table == "b":
            cur.execute("INSERT INTO b VALUES (%s, %s)", [text, number])
        else:
            key = number + 100 + len(rows)  # never taken: starts above START's keys
            value = text if table == "a" else psycopg2.extras.Json({"t": text})
            cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
                sql.Identifier(table)), [key, value])
        return
    if not rows:
        return
    ctid = rows[number % len(rows)][-1]
    if op == "delete":
        cur.execute(sql.SQL("DELETE FROM {} WHERE ctid = %s").format(sql.Identifier(table)),
                    [ctid])
    elif table == "a":
        cur.execute("UPDATE a SET v = %s WHERE ctid = %s", [text, ctid])
    elif table == "b":
        cur.execute("UPDATE b SET n = n + 1 WHERE ctid = %s", [ctid])
    else:
        cur.execute("UPDATE c SET doc = doc || %s WHERE ctid = %s",
                    [psycopg2.extras.Json({"u": text}), ctid])


@pytest.fixture(scope="module")
def model_dbs(server: Server, dumps: Path) -> tuple[str, str]:
    live = server.ivle_db(users=3, extras=MODEL_SCHEMA)
    conn = server.pg.connect(live, server.pg.ivle_user)
    try:
        with conn, conn.cursor() as cur:
            reset(cur)
    finally:
        conn.close()
    restored = server.name("model")
    database.restore_copy(server.params(live), server.dump(live, dumps), restored,
                          fill_as=server.ivle_params(live))
    return live, restored


# 4096 buckets: nearly every changed bucket holds one change (phase one
# alone); one bucket: phase two for any two changes; 4 buckets, each
# fetched alone (phase two's chunks).
@pytest.mark.parametrize("split", [(4096, 200_000), (1, 200_000), (4, 1)])
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_differences_are_the_rows_changed_since_the_dump(
        server: Server, model_dbs: tuple[str, str], ops: list[tuple[str, str, int, str]],
        split: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(differences, "BUCKETS", split[0])
    monkeypatch.setattr(differences, "CHUNK_ROWS", split[1])
    live, restored = model_dbs
    conn = server.pg.connect(live, server.pg.ivle_user)
    try:
        with conn, conn.cursor() as cur:
            reset(cur)
            before = {t: Counter(r[:-1] for r in rows_of(cur, t)) for t in START}
            for op in ops:
                apply(cur, *op)
            after = {t: Counter(r[:-1] for r in rows_of(cur, t)) for t in START}
    finally:
        conn.close()
    # The model: multisets of rows, as Python sees them.
    expected = {t: (sum((after[t] - before[t]).values()), sum((before[t] - after[t]).values()))
                for t in START}
    expected = {t: counts for t, counts in expected.items() if counts != (0, 0)}
    found = database.differences(server.params(live), live, restored)
    assert lines_of(found) == expected
    assert not any(d.schema_differs for d in found)


def test_a_migration_after_the_dump_says_schema_differs(server: Server, dumps: Path) -> None:
    live = server.ivle_db(users=10)
    restored = server.name("migrated")
    database.restore_copy(server.params(live), server.dump(live, dumps), restored,
                          fill_as=server.ivle_params(live))
    server.run(live, """
        ALTER TABLE login ADD COLUMN locked boolean NOT NULL DEFAULT false;
        ALTER TABLE note DROP COLUMN stars, ADD COLUMN stars text;
        UPDATE login SET locked = true;  -- the new column only: nothing comparable changed
        UPDATE login SET fullname = 'Renamed' WHERE login = 'user0002';
        DELETE FROM login WHERE login = 'user0003';  -- and its enrolment, by cascade
        INSERT INTO ivle_maint_migrations VALUES ('20100101-01', now());
        INSERT INTO shape VALUES ('{"a": 1}', '(1,2)');
        CREATE TABLE ivle_maint_cluster (node text);
        INSERT INTO ivle_maint_cluster VALUES ('master');
    """)
    found = {d.name: d for d in database.differences(server.params(live), live, restored)}
    login = found["login"]
    assert login.schema_differs and login.compared.endswith("common columns")
    assert (login.only_in_live, login.only_in_restored) == (1, 2)  # user0002 now; 0002, 0003 then
    assert (login.live_rows, login.restored_rows) == (9, 10)
    assert (found["enrolment"].only_in_live, found["enrolment"].only_in_restored) == (0, 1)
    note = found["note"]  # stars retyped: compared on body alone, duplicates kept
    assert note.schema_differs and (note.only_in_live, note.only_in_restored) == (0, 0)
    assert found["ivle_maint_migrations"].ivle_maint
    assert (found["ivle_maint_migrations"].only_in_live,
            found["ivle_maint_migrations"].only_in_restored) == (1, 0)
    cluster = found["ivle_maint_cluster"]
    assert cluster.ivle_maint and cluster.restored_rows is None and cluster.only_in_live == 1
    assert "only in the live database" in cluster.line()
    assert (found["shape"].only_in_live, found["shape"].only_in_restored) == (1, 0)
    assert set(found) == {"login", "enrolment", "note", "shape", "ivle_maint_migrations",
                          "ivle_maint_cluster"}
    lines = database.summary(list(found.values()))
    assert lines[0].startswith("4 rows written since the dump would be lost")
    assert any("schema differs" in line for line in lines)


def test_table_names_from_the_database_are_quoted_and_escaped(server: Server,
                                                               dumps: Path) -> None:
    live = server.ivle_db(users=1, extras='CREATE SCHEMA "odd""s"; '
                                         'CREATE TABLE "odd""s"."x; DROP\nTABLE login" (v int)')
    restored = server.name("odd")
    database.restore_copy(server.params(live), server.dump(live, dumps), restored,
                          fill_as=server.ivle_params(live))
    server.run(live, 'INSERT INTO "odd""s"."x; DROP\nTABLE login" VALUES (1)')
    (diff,) = database.differences(server.params(live), live, restored)
    assert diff.line().startswith('odd"s.x; DROP\\nTABLE login: 1 rows lost')
    assert server.counts(live)["login"] == 1


# -- swap ----------------------------------------------------------------------


def marked(server: Server, tag: str) -> str:
    """A database whose note table says TAG."""
    name = server.ivle_db(users=1, extras=f"CREATE TABLE which (tag text); "
                                          f"INSERT INTO which VALUES ('{tag}')")
    return name


def tag_of(server: Server, dbname: str) -> str:
    return str(server.query(dbname, "SELECT tag FROM which")[0][0])


def allowed(server: Server, dbname: str) -> bool:
    rows = server.query("postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s",
                        [dbname])
    return bool(rows[0][0])


def test_swap_ends_sessions_on_the_live_database(server: Server) -> None:
    live, restored = marked(server, "old"), marked(server, "new")
    keep_as = database.kept_name(live)
    server.made.append(keep_as)
    session = server.pg.connect(live, server.pg.ivle_user)
    try:
        database.swap(server.params(live), live, restored, keep_as)
        with pytest.raises(psycopg2.OperationalError), session.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        session.close()
    assert tag_of(server, live) == "new" and tag_of(server, keep_as) == "old"
    assert restored not in server.databases()
    assert allowed(server, live) and allowed(server, keep_as)


def test_swap_interrupted_between_the_renames_is_finished_by_a_rerun(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    live, restored = marked(server, "old"), marked(server, "new")
    keep_as = database.kept_name(live)
    server.made.append(keep_as)

    def fail_after_first(old: str, new: str) -> None:
        raise RuntimeError(f"injected after renaming {old} to {new}")

    monkeypatch.setattr(database, "after_rename", fail_after_first)
    with pytest.raises(RuntimeError, match="injected"):
        database.swap(server.params(live), live, restored, keep_as)
    present = server.databases()
    assert live not in present and {keep_as, restored} <= present
    monkeypatch.undo()
    database.swap(server.params(live), live, restored, keep_as)
    assert tag_of(server, live) == "new" and tag_of(server, keep_as) == "old"
    database.swap(server.params(live), live, restored, keep_as)  # done: nothing more to do
    assert tag_of(server, live) == "new"


KILLED_SWAP = """
import os, signal, sys
from ivle_maint.db.connect import ConnectParams, connect
from ivle_maint.gates import environment
from ivle_maint.rollback import database, differences
socket_dir, port, live, restored, keep_as = sys.argv[1:]
database.after_rename = lambda old, new: os.kill(os.getpid(), signal.SIGKILL)
params = ConnectParams(live, socket_dir, int(port), "postgres", None, "postgres",
                       environment.session_options("public", 30, 0))
database.swap(params, live, restored, keep_as)
"""


def test_swap_killed_between_the_renames_is_finished_by_a_rerun(server: Server) -> None:
    live, restored = marked(server, "old"), marked(server, "new")
    keep_as = database.kept_name(live)
    server.made.append(keep_as)
    done = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(server.pg.socket_dir),
                           str(server.pg.port), live, restored, keep_as], cwd=REPO,
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    present = server.databases()
    assert live not in present and {keep_as, restored} <= present
    assert not allowed(server, restored)  # closed to sessions until the swap is done
    database.swap(server.params(live), live, restored, keep_as)
    assert tag_of(server, live) == "new" and tag_of(server, keep_as) == "old"
    assert allowed(server, live) and allowed(server, keep_as)


def test_swap_refuses_a_state_it_did_not_make(server: Server) -> None:
    live = marked(server, "old")
    with pytest.raises(MaintError, match=r"cannot swap the databases: .* missing"):
        database.swap(server.params(live), live, server.name("absent"),
                      database.kept_name(live))


# -- failed databases kept -----------------------------------------------------


def test_kept_names_parse_strictly() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert database.kept_name("ivle", when) == "ivle_failed_20260102030405"
    assert database.parse_kept("ivle", "ivle_failed_20260102030405") == when
    for name in ("ivle", "ivle_failed_2026010203040", "ivle_failed_202601020304050",
                 "ivle_failed_20261302030405", "ivle_failed_20260230030405",
                 "ivle_failed_20260102030405x", "xivle_failed_20260102030405",
                 "ivle_failed_20260102030405\n", "ivle_failed_\uff12\uff10\uff12\uff160102030405",
                 "ivle.failed_20260102030405", "ivlE_failed_20260102030405"):
        assert database.parse_kept("ivle", name) is None, name
    assert database.parse_kept("iv.e", "ivle_failed_20260102030405") is None
    with pytest.raises(MaintError):
        database.kept_name("x" * 60, when)


def test_drop_expired_drops_only_old_names_that_match(server: Server) -> None:
    live = server.ivle_db(users=1)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    old = database.kept_name(live, datetime(2026, 5, 1, tzinfo=UTC))
    recent = database.kept_name(live, datetime(2026, 5, 30, tzinfo=UTC))
    lookalikes = [f"{live}_failed_20260230000000", f"{old}_copy", f"{live}_failed_2026050100000",
                  f"{live}x_failed_20260501000000"]
    admin = server.pg.connect("postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for name in [old, recent, *lookalikes]:
                server.made.append(name)
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    kept = database.kept_databases(server.params(live), live)
    assert [k.name for k in kept] == [old, recent]
    assert database.drop_expired(server.params(live), live, 7, now=now) == [old]
    present = server.databases()
    assert old not in present and recent in present and live in present
    assert set(lookalikes) <= present
    assert database.drop_expired(server.params(live), live, 0, now=now) == [recent]
    assert set(lookalikes) | {live} <= server.databases()



def test_a_node_connecting_during_the_swap_waits_and_finds_the_restored_database(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ivle-maint process connects through db.connect (a slave's
    hooks, the master's next step): one that connects while the swap has the
    live database renamed away, or closed to connections, waits and then
    finds the restored database under the live name; it does not fail."""
    live, restored = marked(server, "old"), marked(server, "new")
    keep_as = database.kept_name(live)
    server.made.append(keep_as)
    pg = server.pg
    ivle = ConnectParams(live, "127.0.0.1", pg.port, pg.ivle_user, pg.ivle_password,
                         options=environment.session_options("public", 30, 0))
    found: list[object] = []
    told: list[list[str]] = []
    threads: list[threading.Thread] = []

    def connect_now() -> None:
        reporter = RecordingReporter()
        told.append(reporter.lines)
        try:
            conn = connect(ivle, wait_timeout=30, reporter=reporter)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT tag FROM which")
                    found.append(cur.fetchone()[0])
            finally:
                conn.close()
        except MaintError as exc:
            found.append(exc)

    def connect_meanwhile(old: str, new: str) -> None:
        threads.append(threading.Thread(target=connect_now))
        threads[-1].start()
        time.sleep(0.3)  # the swap held at this point while the node tries

    monkeypatch.setattr(database, "after_rename", connect_meanwhile)
    database.swap(server.params(live), live, restored, keep_as)
    for thread in threads:
        thread.join(60)
    assert found == ["new", "new"], found
    # Each tried while the database was gone or closed, and said it waits.
    assert all(any("does not exist" in line or "not currently accepting" in line
                   for line in lines) for lines in told), told

"""Migration classes checked against a real PostgreSQL (doc/migrations.md).

Hypothesis builds migrations from PostgreSQL's grammar pieces (ALTER TABLE
forms, constraints with and without NOT VALID, drops, renames, CREATE OR
REPLACE, overloads, data-modifying CTEs, a table "created" IF NOT EXISTS...)
against a table the old code uses, classifies each offline, runs it, and
asks the server what it did:

- the old code's queries, in another session, before and after: one that
  fails or answers differently afterwards means the migration is destructive;
- per statement, the table's relfilenode (a rewrite) and its sequential
  scans in this transaction (pg_stat_xact_user_tables) while this session
  holds a lock that blocks writers on it (pg_locks): either means the
  migration is at least locking.

Each example uses its own objects (t<N>...), so committed migrations never
meet.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.db import migration_class as mc
from ivle_maint.db import pgparse
from ivle_maint.db.sqlsplit import split
from support.migration_site import Site

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.skipif(not pgparse.available(), reason="pglast is not installed"),
]

_N = itertools.count()

SETUP = """
CREATE TABLE {t} (id serial PRIMARY KEY, a integer, b text, c integer NOT NULL DEFAULT 0);
INSERT INTO {t} (a, b, c) SELECT g, 'x' || g, g FROM generate_series(1, 300) g;
CREATE TABLE {t}_ref (id integer PRIMARY KEY);
INSERT INTO {t}_ref SELECT g FROM generate_series(1, 300) g;
CREATE VIEW {t}_v AS SELECT id, a, b FROM {t};
CREATE FUNCTION {t}_f(bigint) RETURNS text LANGUAGE sql AS $$ SELECT 'old' $$;
"""
# What the old code does: each runs in a transaction of its own, rolled back.
OLD_CODE = [
    "SELECT id, a, b, c FROM {t} ORDER BY id LIMIT 5",
    "SELECT count(*) FROM {t} WHERE id <= 300",
    "INSERT INTO {t} (a, b) VALUES (0, NULL) RETURNING a, b, c",
    "INSERT INTO {t} (a, b, c) VALUES (7, 'n', 1) RETURNING a, b, c",
    "UPDATE {t} SET a = 999, b = NULL WHERE id = 2 RETURNING a, b",
    "DELETE FROM {t}_ref WHERE id = 3 RETURNING id",
    "SELECT id, a, b FROM {t}_v ORDER BY id LIMIT 5",
    "SELECT {t}_f(1)",
]

ALTERS = [
    "ALTER TABLE {t} ADD COLUMN n integer",
    "ALTER TABLE {t} ADD COLUMN n integer DEFAULT 5",
    "ALTER TABLE {t} ADD COLUMN n integer DEFAULT 5 NOT NULL",
    "ALTER TABLE {t} ADD COLUMN n integer NOT NULL",
    "ALTER TABLE {t} ADD COLUMN n double precision DEFAULT random()",
    "ALTER TABLE {t} ADD COLUMN n timestamptz DEFAULT now()",
    "ALTER TABLE {t} ADD COLUMN n integer GENERATED ALWAYS AS (a * 2) STORED",
    "ALTER TABLE {t} ADD COLUMN n {t}_d DEFAULT 1",
    "ALTER TABLE {t} ADD COLUMN n {t}_e DEFAULT 'x'",
    "ALTER TABLE {t} ALTER COLUMN a TYPE bigint",
    "ALTER TABLE {t} ALTER COLUMN b TYPE varchar(3)",
    "ALTER TABLE {t} ALTER COLUMN b SET NOT NULL",
    "ALTER TABLE {t} ALTER COLUMN c DROP NOT NULL",
    "ALTER TABLE {t} ALTER COLUMN b SET DEFAULT 'd'",
    "ALTER TABLE {t} ALTER COLUMN c DROP DEFAULT",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_k CHECK (a > 0)",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_k CHECK (a > 0) NOT VALID",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_k CHECK (b IS NOT NULL) NOT VALID",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_k UNIQUE (a)",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_k FOREIGN KEY (a) REFERENCES {t}_ref",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_k FOREIGN KEY (a) REFERENCES {t}_ref NOT VALID",
    "ALTER TABLE {t} DROP COLUMN b",
    "ALTER TABLE {t} RENAME COLUMN b TO bb",
    "ALTER TABLE {t} RENAME TO {t}_renamed",
    "ALTER TABLE {t} ALTER COLUMN a SET STATISTICS 200",
    "ALTER TABLE {t} SET (fillfactor = 70)",
]
OTHERS = [
    "CREATE INDEX ON {t} (a)",
    "CREATE UNIQUE INDEX ON {t} (id, a)",
    "COMMENT ON COLUMN {t}.a IS 'x'",
    "GRANT SELECT ON {t} TO PUBLIC",
    "INSERT INTO {t} (a, b) VALUES (1, 'new')",
    "INSERT INTO {t}_n SELECT id FROM {t}",
    "WITH d AS (DELETE FROM {t}_ref RETURNING id) INSERT INTO {t}_n SELECT id FROM d",
    "WITH u AS (UPDATE {t} SET b = NULL RETURNING id) INSERT INTO {t}_n SELECT id FROM u",
    "UPDATE {t} SET b = 'z'",
    "DELETE FROM {t} WHERE a > 100",
    "TRUNCATE {t}_ref CASCADE",
    "DROP VIEW {t}_v",
    "CREATE OR REPLACE VIEW {t}_v AS SELECT id, a, b || '!' AS b FROM {t}",
    "CREATE OR REPLACE FUNCTION {t}_f(bigint) RETURNS text LANGUAGE sql AS $$ SELECT 'new' $$",
    "CREATE FUNCTION {t}_f(integer) RETURNS text LANGUAGE sql AS $$ SELECT 'new' $$",
    "CREATE FUNCTION {t}_g(integer) RETURNS text LANGUAGE sql AS $$ SELECT 'g' $$",
    "CREATE TABLE IF NOT EXISTS {t} (id integer)",
    "CREATE TABLE IF NOT EXISTS {t}_ref (id integer)",
    "CREATE VIEW {t}_w AS SELECT a FROM {t}",
    "CREATE TABLE {t}_m AS SELECT * FROM {t}",
    "DO $$ BEGIN UPDATE {t} SET a = 0; END $$",
    "ANALYZE {t}",
    "LOCK TABLE {t} IN SHARE MODE",
    "CREATE FUNCTION {t}_tr() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "CREATE TYPE {t}_e2 AS ENUM ('p');\nALTER TABLE {t} ADD COLUMN n2 {t}_e2",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_k2 CHECK (c >= 0) NOT VALID;\n"
    "ALTER TABLE {t} VALIDATE CONSTRAINT {t}_k2",
    "CREATE SCHEMA {t}_s;\nSET search_path = {t}_s;\nCREATE TABLE {t}_ref (id integer);\n"
    "RESET search_path",
]
# Objects the statements above may name, created with the migration's table.
EXTRA_SETUP = """
CREATE DOMAIN {t}_d AS integer CHECK (VALUE > 0);
CREATE TYPE {t}_e AS ENUM ('x', 'y');
CREATE TABLE {t}_n (id integer);
"""

STATEMENT = st.sampled_from(ALTERS + OTHERS)
WRITE_BLOCKING = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}


def _old_code(conn: Any, t: str) -> list[Any]:
    """Each old query's rows, or its error's SQLSTATE."""
    results: list[Any] = []
    for sql in OLD_CODE:
        with conn.cursor() as cur:
            try:
                cur.execute(sql.format(t=t))
                results.append(("rows", cur.fetchall()))
            except Exception as exc:  # the old code broke: its SQLSTATE says how
                results.append(("error", getattr(exc, "pgcode", str(exc))))
            finally:
                conn.rollback()
    return results


def _state(cur: Any, t: str) -> tuple[Any, int, set[str]]:
    """The table's relfilenode, its sequential scans so far in this
    transaction, and the locks this session holds on it."""
    cur.execute("SELECT c.relfilenode, coalesce(s.seq_scan, 0) FROM pg_class c "
                "LEFT JOIN pg_stat_xact_user_tables s ON s.relid = c.oid "
                "WHERE c.oid = to_regclass(%s)", [t])
    row = cur.fetchone()
    if row is None:
        return None, 0, set()
    cur.execute("SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND "
                "relation = to_regclass(%s)", [t])
    return row[0], row[1], {r[0] for r in cur.fetchall()}


def observe(site: Site, text: str, t: str) -> tuple[bool, bool, list[str]]:
    """Run TEXT as one migration: (applied, held writers off a scan or rewrite, what broke)."""
    old = site.connect()
    migrator = site.connect()
    try:
        before = _old_code(old, t)
        blocking = False
        with migrator.cursor() as cur:
            try:
                for statement in split(text):
                    rel, scans, _ = _state(cur, t)
                    cur.execute(statement.text)
                    rel_after, scans_after, locks = _state(cur, t)
                    rewritten = rel is not None and rel_after is not None and rel != rel_after
                    scanned = scans_after > scans
                    if (rewritten or scanned) and locks & WRITE_BLOCKING:
                        blocking = True
                migrator.commit()
            except Exception:  # the server refused it: nothing to compare
                migrator.rollback()
                return False, False, []
        after = _old_code(old, t)
        broke = [OLD_CODE[i] for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
        return True, blocking, broke
    finally:
        old.close()
        migrator.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(STATEMENT, min_size=1, max_size=3))
def test_a_class_never_claims_less_than_the_server_does(site: Site,
                                                        templates: list[str]) -> None:
    t = f"t{next(_N)}"
    site.run_sql((SETUP + EXTRA_SETUP).format(t=t))
    text = "".join(s.format(t=t) + ";\n" for s in templates)
    found = mc.deciding(mc.verdicts(split(text)))
    applied, blocking, broke = observe(site, text, t)
    if not applied:
        return
    if broke:
        assert found.cls == mc.DESTRUCTIVE, (text, found.describe(), broke)
    if blocking:
        assert found.cls != mc.ADDITIVE, (text, found.describe())


# Each piece alone, and the pairs whose second statement runs under the
# first's consequences (a table "created" that was there, a lock held on).
CASES = [[s] for s in ALTERS + OTHERS] + [
    ["CREATE TABLE IF NOT EXISTS {t} (id integer)", "UPDATE {t} SET b = NULL"],
    ["ALTER TABLE {t} ADD COLUMN n integer", "INSERT INTO {t}_n SELECT id FROM {t}"],
    [OTHERS[-1], "TRUNCATE {t}_ref CASCADE"],
    [OTHERS[-1], "DELETE FROM {t}_ref"],
]


def test_each_piece_is_classed_no_milder_than_the_server_shows(site: Site) -> None:
    wrong = []
    for templates in CASES:
        t = f"t{next(_N)}"
        site.run_sql((SETUP + EXTRA_SETUP).format(t=t))
        text = "".join(s.format(t=t) + ";\n" for s in templates)
        found = mc.deciding(mc.verdicts(split(text)))
        applied, blocking, broke = observe(site, text, t)
        if applied and ((broke and found.cls != mc.DESTRUCTIVE) or
                        (blocking and found.cls == mc.ADDITIVE)):
            wrong.append((text, found.describe(), broke, blocking))
    assert not wrong

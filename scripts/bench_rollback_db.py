#!/usr/bin/python3
"""Benchmark: a full rollback of a 200 MB database against a bare pg_restore of its dump.

One throwaway PostgreSQL server, one IVLE-shaped database grown to
--size-mb (users, offerings, enrolments and large tables of worksheet
attempts, saves and project submissions, with indexes, foreign keys, a
view, a trigger and a function that depends on a table, as IVLE's schema
has), dumped as ivle-maint dumps it before migrating (pg_dump's custom
format).  Some rows are then written, changed and deleted in the live
database (a release's first hours).  In one run, --runs times in turn:

- bare: `pg_restore` (one job, default options) of the dump into an empty
  database made beforehand;
- rollback: rollback/database.py's restore_copy (CREATE DATABASE, the dump
  copied for pg_restore and restored with one job per CPU), differences
  (what the swap would lose, per table) and swap (the renames).

After each rollback the failed database is renamed back, so every run
rolls back the same database.  Printed: each run's times, the medians,
the rollback's three parts, the differences found, and the ratio of the
medians rollback / bare (target: at most 1.2; exit 1 otherwise).  The
rollback must find exactly the rows changed after the dump, or the
benchmark fails.  Run as root: `make bench`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "scripts"), str(REPO)]

from psycopg2 import sql  # noqa: E402

from ivle_maint.db import backup  # noqa: E402
from ivle_maint.db.connect import ConnectParams  # noqa: E402
from ivle_maint.gates import environment  # noqa: E402
from ivle_maint.rollback import database  # noqa: E402
from ivle_sandbox import bench, schema  # noqa: E402
from ivle_sandbox.postgres import ThrowawayPostgres  # noqa: E402

TARGET = 1.2
LIVE = "ivle_bench"
USERS = 5000
ROW_BYTES = 350  # one generated row, its share of the indexes included (measured)

# IVLE-shaped, written for the benchmark: IVLE's biggest tables are the
# students' worksheet attempts and saves and their project submissions.
# attempts_of() returns a table's rows (it depends on the table: what
# pg_restore --clean cannot drop); a view and a trigger beside it.
SCHEMA = """
CREATE TABLE problem (problemid serial PRIMARY KEY, identifier text UNIQUE NOT NULL,
                      spec text NOT NULL);
CREATE TABLE problem_attempt (
    attemptid   bigserial PRIMARY KEY,
    loginid     int NOT NULL REFERENCES login (loginid) ON DELETE CASCADE,
    problemid   int NOT NULL REFERENCES problem (problemid),
    date        timestamp NOT NULL,
    attempt     text NOT NULL,
    complete    boolean NOT NULL
);
CREATE INDEX problem_attempt_login ON problem_attempt (loginid, problemid);
CREATE INDEX problem_attempt_date ON problem_attempt (date);
CREATE TABLE problem_save (
    loginid     int NOT NULL REFERENCES login (loginid) ON DELETE CASCADE,
    problemid   int NOT NULL REFERENCES problem (problemid),
    worksheet   int NOT NULL,
    date        timestamp NOT NULL,
    text        text NOT NULL,
    PRIMARY KEY (loginid, problemid, worksheet)
);
CREATE INDEX problem_save_date ON problem_save (date);
CREATE TABLE project_submission (
    submissionid bigserial PRIMARY KEY,
    loginid     int NOT NULL REFERENCES login (loginid) ON DELETE CASCADE,
    offeringid  int NOT NULL REFERENCES offering (offeringid),
    path        text NOT NULL,
    revision    int NOT NULL,
    date_submitted timestamptz NOT NULL
);
CREATE INDEX project_submission_login ON project_submission (loginid, offeringid);
CREATE FUNCTION attempts_of(login) RETURNS SETOF problem_attempt LANGUAGE sql STABLE
    AS $$ SELECT * FROM problem_attempt WHERE loginid = $1.loginid $$;
CREATE VIEW completed AS
    SELECT l.login, a.problemid, max(a.date) AS last
    FROM login l JOIN problem_attempt a USING (loginid) WHERE a.complete GROUP BY 1, 2;
CREATE FUNCTION touch_save() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN NEW.date := greatest(NEW.date, OLD.date); RETURN NEW; END $$;
CREATE TRIGGER problem_save_touch BEFORE UPDATE ON problem_save
    FOR EACH ROW EXECUTE FUNCTION touch_save();
INSERT INTO problem (identifier, spec)
    SELECT 'problem' || i, repeat(md5(i::text), 20) FROM generate_series(1, 500) AS i;
"""

# Each table's share of the rows; the text is code-like and not all alike.
FILL = """
INSERT INTO problem_attempt (loginid, problemid, date, attempt, complete)
SELECT 1 + i %% %(users)s, 1 + i %% 500, timestamp '2009-03-01' + i * interval '1 second',
       'def solve(xs):\n    return ' || md5(i::text) || repeat(md5((i %% 977)::text), 6),
       i %% 3 = 0
FROM generate_series(1, %(attempts)s) AS i;
INSERT INTO problem_save (loginid, problemid, worksheet, date, text)
SELECT 1 + i %% %(users)s, 1 + (i / %(users)s) %% 500, i / (%(users)s * 500),
       timestamp '2009-03-01' + i * interval '1 second',
       '# saved\n' || md5(i::text) || repeat(md5((i %% 613)::text), 6)
FROM generate_series(0, %(saves)s - 1) AS i;
INSERT INTO project_submission (loginid, offeringid, path, revision, date_submitted)
SELECT 1 + i %% %(users)s, 1, '/users/u' || i %% %(users)s || '/project' || md5(i::text),
       i, timestamptz '2009-05-01' + i * interval '1 minute'
FROM generate_series(1, %(submissions)s) AS i;
"""

# A release's first hours, after the dump: what the rollback loses or brings back.
AFTER_DUMP = """
INSERT INTO problem_attempt (loginid, problemid, date, attempt, complete)
    SELECT 1, 1, now(), 'written after the dump ' || i, false FROM generate_series(1, 100) AS i;
UPDATE problem_attempt SET complete = NOT complete WHERE attemptid <= 10;
DELETE FROM problem_attempt WHERE attemptid BETWEEN 11 AND 15;
UPDATE problem_save SET text = text || '# edited' WHERE worksheet = 0 AND problemid = 1
    AND loginid <= 20;
INSERT INTO project_submission (loginid, offeringid, path, revision, date_submitted)
    VALUES (1, 1, '/users/u1/late', 1, now());
"""
EXPECTED = {"problem_attempt": (110, 15), "problem_save": (20, 20),
            "project_submission": (1, 0)}  # (lost, back)


def params(pg: ThrowawayPostgres, dbname: str) -> ConnectParams:
    """[database] connect_as = postgres, as a rollback runs."""
    return ConnectParams(dbname, str(pg.socket_dir), pg.port, "postgres", None, "postgres",
                         environment.session_options("public", 0, 0))


def run_sql(pg: ThrowawayPostgres, dbname: str, text: str, args: Any = None) -> None:
    conn = pg.connect(dbname, pg.ivle_user)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(text, args)
    finally:
        conn.close()


def admin(pg: ThrowawayPostgres, statement: sql.Composable) -> Any:
    conn = pg.connect("postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def build(pg: ThrowawayPostgres, size_mb: int) -> int:
    """The live database, grown to about SIZE_MB; its size in bytes."""
    schema.create_database(pg, LIVE, users=USERS)
    run_sql(pg, LIVE, SCHEMA)
    rows = max(1000, size_mb * 1024 * 1024 // ROW_BYTES)
    run_sql(pg, LIVE, FILL, {"users": USERS, "attempts": rows * 45 // 100,
                             "saves": rows * 35 // 100, "submissions": rows * 20 // 100})
    run_sql(pg, LIVE, "ANALYZE")
    size: int = admin(pg, sql.SQL("SELECT pg_database_size({})").format(sql.Literal(LIVE)))[0]
    return size


def bare_restore(pg: ThrowawayPostgres, dump: Path) -> float:
    """pg_restore, one job, default options, into an empty database; seconds."""
    admin(pg, sql.SQL("CREATE DATABASE bare TEMPLATE template0 OWNER {}").format(
        sql.Identifier(pg.ivle_user)))
    started = time.perf_counter()
    subprocess.run(["pg_restore", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U",
                    pg.superuser, "-d", "bare", str(dump)], check=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - started
    admin(pg, sql.SQL("DROP DATABASE bare"))
    return took


def rollback(pg: ThrowawayPostgres, dump: Path) -> tuple[dict[str, float], list[Any]]:
    """restore_copy + differences + swap; each part's seconds, and the differences.
    The failed database is then put back, for the next run."""
    live = params(pg, LIVE)
    times: dict[str, float] = {}
    started = time.perf_counter()
    database.restore_copy(live, dump, "restored")
    times["restore_copy"] = time.perf_counter() - started
    found = database.differences(live, LIVE, "restored")
    times["differences"] = time.perf_counter() - started - times["restore_copy"]
    kept = database.kept_name(LIVE)
    database.swap(live, LIVE, "restored", kept)
    times["swap"] = time.perf_counter() - started - times["restore_copy"] - times["differences"]
    times["total"] = time.perf_counter() - started
    admin(pg, sql.SQL("DROP DATABASE {}").format(sql.Identifier(LIVE)))
    admin(pg, sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(kept),
                                                              sql.Identifier(LIVE)))
    return times, found


def main() -> int:
    args, root = bench.begin(__doc__, "ivle-bench-rollback-", **{"size-mb": 200, "runs": 3})
    bares: list[float] = []
    ours: list[dict[str, float]] = []
    try:
        with ThrowawayPostgres(root / "pg") as pg:
            schema.ensure_template(pg)
            size = build(pg, args.size_mb)
            dump = backup.dump(params(pg, LIVE), root / "backups", label="bench", keep=1)
            dump_mb = dump.stat().st_size / 2**20
            run_sql(pg, LIVE, AFTER_DUMP)
            for _ in range(args.runs):
                bares.append(bare_restore(pg, dump))
                times, found = rollback(pg, dump)
                ours.append(times)
                print(f"run {len(bares)}: bare {bares[-1]:.2f}s, rollback {times['total']:.2f}s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    bare = statistics.median(bares)
    part = {key: statistics.median(t[key] for t in ours) for key in ours[0]}
    ratio = part["total"] / bare
    print(f"database {size / 2**20:.0f} MB, dump {dump_mb:.0f} MB (custom format), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; medians of {args.runs} runs:")
    print(f"bare pg_restore (1 job):         {bare:.2f}s")
    print(f"rollback (restore_copy + differences + swap): {part['total']:.2f}s "
          f"(restore_copy {part['restore_copy']:.2f}s, differences "
          f"{part['differences']:.2f}s, swap {part['swap']:.2f}s)")
    for line in database.summary(found):
        print(f"  {line}")
    got = {d.name: (d.only_in_live, d.only_in_restored) for d in found}
    if got != EXPECTED:
        print(f"bench: differences found {got}, expected {EXPECTED}")
        return 1
    print(f"ratio rollback/bare: {ratio:.2f} (target <= {TARGET:g}: "
          f"{'PASS' if ratio <= TARGET else 'FAIL'})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    bench.run(main)

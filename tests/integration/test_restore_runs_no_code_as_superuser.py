"""A full rollback restores the dump as the postgres superuser ([rollback]
connect_as = postgres, the default), and so does the restore command a
failed migration prints (`sudo -u postgres pg_restore`): no function that
IVLE's database login wrote may run with the superuser's rights while the
rows go back (client.restore_argv: each object restored as its owner)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_maint.db import backup
from ivle_maint.db.connect import ConnectParams
from ivle_maint.gates import environment
from ivle_maint.rollback import database
from ivle_sandbox import schema

pytestmark = pytest.mark.needs_postgres

GRAB = """
CREATE FUNCTION grab(int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE format('ALTER ROLE %I SUPERUSER', '{ivle}');
  END IF;
  RETURN true;
END $$;
-- What a generated column or an index may call; grab runs as volatile.
CREATE FUNCTION grab_i(int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN RETURN public.grab($1); END $$;
"""
# Each runs grab() for every row restored: a CHECK, a domain's check, a
# generated column, an index's expression.
PLANTS = {
    "check": "CREATE TABLE planted (n int CHECK (grab(n)));",
    "domain": "CREATE DOMAIN grabbing AS int CHECK (grab(VALUE)); "
              "CREATE TABLE planted (n grabbing);",
    "generated": "CREATE TABLE planted (n int, g boolean GENERATED ALWAYS AS (grab_i(n)) STORED);",
    "index": "CREATE TABLE planted (n int); CREATE INDEX ON planted ((grab_i(n)));",
}


def params(pg: Any, dbname: str) -> ConnectParams:
    return ConnectParams(dbname, str(pg.socket_dir), pg.port, "postgres", None,
                         "postgres", environment.session_options("public", 30, 0))


@pytest.fixture
def names(postgres: Any) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        schema.drop_database(postgres, name)
    conn = postgres.connect("postgres")
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f'ALTER ROLE "{postgres.ivle_user}" NOSUPERUSER')
    finally:
        conn.close()


def _superuser(pg: Any) -> bool:
    conn = pg.connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [pg.ivle_user])
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def _planted(pg: Any, names: list[str], tmp_path: Path, plant: str) -> tuple[str, Path]:
    live = f"rb_live_{uuid.uuid4().hex[:8]}"
    names.append(live)
    schema.create_database(pg, live, users=2)
    conn = pg.connect(live, pg.ivle_user)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(GRAB.replace("{ivle}", pg.ivle_user) + PLANTS[plant]
                        + "INSERT INTO planted (n) VALUES (1), (2);")
    finally:
        conn.close()
    return live, backup.dump(params(pg, live), tmp_path / "backups", label="t", keep=5)


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_rollbacks_restore_runs_no_function_of_the_databases_users_as_superuser(
        postgres: Any, names: list[str], tmp_path: Path, plant: str) -> None:
    live, taken = _planted(postgres, names, tmp_path, plant)
    copy = f"rb_copy_{uuid.uuid4().hex[:8]}"
    names.append(copy)
    database.restore_copy(params(postgres, live), taken, copy, jobs=2)
    assert not _superuser(postgres)
    # Restored whole all the same: the rows, and the owner of what was made.
    conn = postgres.connect(copy)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), pg_get_userbyid(c.relowner) FROM planted, pg_class c "
                        "WHERE c.oid = 'planted'::regclass GROUP BY 2")
            assert cur.fetchall() == [(2, postgres.ivle_user)]
    finally:
        conn.close()


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_the_printed_restore_command_runs_no_function_of_the_databases_users_as_superuser(
        postgres: Any, names: list[str], tmp_path: Path, plant: str) -> None:
    live, taken = _planted(postgres, names, tmp_path, plant)
    names.append(f"{live}_restored")
    as_postgres = params(postgres, live)
    line = backup.restore_command(as_postgres, taken, owner=postgres.ivle_user)
    create_fill = line.split(", then with IVLE's web server")[0]
    done = subprocess.run(["sh", "-c", create_fill], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert not _superuser(postgres)


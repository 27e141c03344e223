"""A full rollback restores the dump as the postgres superuser ([rollback]
connect_as = postgres, the default), and so does the restore command a
failed migration prints (`sudo -u postgres pg_restore`): no function that
IVLE's database login wrote may run with the superuser's rights while the
rows go back (client.restore_argv: each object restored as its owner)."""

from __future__ import annotations

import os
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
  BEGIN  -- back to the session's own user, if it is a superuser's session
    SET SESSION AUTHORIZATION DEFAULT;
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  BEGIN
    RESET ROLE;
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE format('ALTER ROLE %I SUPERUSER', '{ivle}');
    -- and what no rollback of a transaction undoes: a file in the data directory
    EXECUTE format('COPY (SELECT 1) TO %L',
                   current_setting('data_directory') || '/grabbed-{ivle}');
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
    """[rollback] connect_as = postgres, the default."""
    return ConnectParams(dbname, str(pg.socket_dir), pg.port, "postgres", None,
                         "postgres", environment.session_options("public", 30, 0))


def ivle_params(pg: Any, dbname: str) -> ConnectParams:
    """ivle.conf's login (rollback/restore.fill_params)."""
    return ConnectParams(dbname, "127.0.0.1", pg.port, pg.ivle_user, pg.ivle_password,
                         options=environment.session_options("public", 30, 0))


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
            grabbed = f"grabbed-{postgres.ivle_user}"
            cur.execute("SELECT pg_stat_file(%s, true) IS NOT NULL", [grabbed])
            if cur.fetchone()[0]:  # a superuser's COPY TO wrote it; it goes the same way
                cur.execute("COPY (SELECT 1) TO PROGRAM %s", [f"rm -f {grabbed}"])
    finally:
        conn.close()


def _superuser(pg: Any) -> bool:
    """Did grab() run as a superuser: IVLE's login is one, or its file was written."""
    conn = pg.connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [pg.ivle_user])
            become = bool(cur.fetchone()[0])
            cur.execute("SELECT pg_stat_file(%s, true) IS NOT NULL", [f"grabbed-{pg.ivle_user}"])
            return become or bool(cur.fetchone()[0])
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
    database.restore_copy(params(postgres, live), taken, copy, jobs=2,
                          fill_as=ivle_params(postgres, live))
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
    line = backup.restore_command(as_postgres, taken, owner=postgres.ivle_user,
                                  fill_as=ivle_params(postgres, live))
    create_fill = line.split(", then with IVLE's web server")[0]
    # The password the printed pg_restore asks for, typed.
    done = subprocess.run(["sh", "-c", create_fill], capture_output=True, text=True,
                          check=False, env={**os.environ, "PGPASSWORD": postgres.ivle_password})
    assert done.returncode == 0, done.stderr
    assert not _superuser(postgres)



# Planted with IVLE's login before the upgrade, so the restore point's dump
# holds them: a CHECK the restore's rows run, and a trigger on the cluster's
# media table the rollback writes today's rows into (rollback/cluster_rows.carry).
FULL_PLANT = """
CREATE TABLE planted (n int CHECK (grab(n)));
INSERT INTO planted VALUES (1);
CREATE FUNCTION grab_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM public.grab(1); RETURN coalesce(NEW, OLD); END $$;
"""
TRIGGER = """
CREATE TRIGGER grab BEFORE INSERT OR DELETE ON ivle_maint_media
    FOR EACH ROW EXECUTE FUNCTION grab_row();
"""


@pytest.mark.needs_root
@pytest.mark.parametrize("plant", ["check", "trigger"])
def test_a_full_rollback_runs_no_function_of_ivles_login_as_superuser(
        node_factory: Any, names: list[str], plant: str) -> None:
    """Through dpkg's hook calls, [rollback] connect_as = postgres (the
    default): the restore and the copy of the cluster's rows run as
    ivle.conf's login (rollback/restore.fill_params)."""
    from ivle_maint.cluster import table
    from ivle_sandbox.releases import DESTRUCTIVE, RELEASES
    from support.upgrade_helpers import at_version_1_0, cli, unpack

    node = at_version_1_0(node_factory(users=2, role="both"))
    pg = node.pg
    conn = node.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(GRAB.replace("{ivle}", pg.ivle_user))
            if plant == "check":
                cur.execute(FULL_PLANT)
            else:
                cur.execute(FULL_PLANT[FULL_PLANT.index("CREATE FUNCTION grab_row"):] + TRIGGER)
        if plant == "trigger":  # a row to carry: a value chosen for a version never installed
            table.claim_media(conn, "0.9", "0.9", "old")
    finally:
        conn.close()

    def hook(*args: str, env: dict[str, str] | None = None) -> None:
        done = cli(node, "hook", *args, extra_env=env)
        assert done.returncode == 0, done.stderr

    hook("preinst", "upgrade", "1.0", "1.1")
    unpack(node, "1.1", {**RELEASES["1.1"], **DESTRUCTIVE})
    hook("--package-version", "1.1", "postinst", "configure", "1.0")
    accept = {"IVLE_MAINT_ACCEPT_DATA_LOSS": "1"}
    hook("preinst", "upgrade", "1.1", "1.0", env=accept)
    unpack(node, "1.0")
    hook("--package-version", "1.0", "postinst", "configure", "1.1", env=accept)
    assert not _superuser(pg)
    conn = node.connect()
    try:
        with conn.cursor() as cur:  # the full rollback did happen
            cur.execute("SELECT count(*) FROM ivle_maint_migrations WHERE key LIKE '20100301%'")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()

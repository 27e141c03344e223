"""Gate 5 (gates/environment.py): children and database sessions.

Nothing inherited decides what a child runs, where a connection goes or
which schema a statement writes to; each migration starts from the
session as it connected.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_maint import system
from ivle_maint.db import migrations
from ivle_maint.gates import environment
from support.db_site import baselined_site
from support.migration_site import Site

pytestmark = pytest.mark.needs_postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(postgres: Any, tmp_path: Path) -> Iterator[Site]:
    with baselined_site(postgres, tmp_path) as site:
        yield site


def tables_in(site: Site, schema_name: str) -> list[str]:
    rows = site.query("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                      [schema_name])
    return [r[0] for r in rows]


def public_marker(site: Site) -> list[str]:
    return [r[0] for r in site.query("SELECT key FROM public.ivle_maint_migrations ORDER BY 1")]


# -- each migration in a reset session -------------------------------------------

def test_search_path_set_by_a_migration_does_not_carry_into_the_next(db: Site) -> None:
    db.add_migration("20100101-01.sql", "CREATE SCHEMA evil;\nSET search_path TO evil, public;\n")
    db.add_migration("20100101-02.sql", "CREATE TABLE widgets (id int);\n")
    result = migrations.apply_migrations(db.settings(), db.reporter)
    assert [a.key for a in result.applied] == ["20100101-01", "20100101-02"]
    assert "widgets" in tables_in(db, "public")
    assert tables_in(db, "evil") == []
    assert public_marker(db) == ["20090101-01", "20100101-01", "20100101-02"]


def test_marker_rows_never_land_in_a_table_a_migration_planted(db: Site) -> None:
    db.add_migration("20100101-01.sql",
                     "CREATE SCHEMA evil;\nSET search_path TO evil, public;\n"
                     "CREATE TABLE evil.ivle_maint_migrations "
                     "(LIKE public.ivle_maint_migrations INCLUDING ALL);\n")
    db.add_migration("20100101-02.sql", "SELECT 1;\n")
    migrations.apply_migrations(db.settings(), db.reporter)
    assert public_marker(db) == ["20090101-01", "20100101-01", "20100101-02"]
    assert db.query("SELECT count(*) FROM evil.ivle_maint_migrations") == [(0,)]


@pytest.mark.parametrize("header", ["", "-- ivle-maint: no-transaction\n"])
@pytest.mark.parametrize("on_commit", ["", " ON COMMIT DROP", " ON COMMIT DELETE ROWS",
                                       " ON COMMIT PRESERVE ROWS"])
def test_marker_rows_never_land_in_a_temporary_table_a_migration_made(
        db: Site, header: str, on_commit: str) -> None:
    """A temporary table of the marker's name, made by the migration itself
    (in either mode, however it ends at COMMIT): pg_temp comes first in any
    search_path that does not name it, so the row went there and was gone
    with it: the migration applied, recorded nowhere, run again by the next
    run (ALTER TABLE ... ADD COLUMN failed: already exists)."""
    db.add_migration("20100101-01.sql",
                     f"{header}CREATE TEMPORARY TABLE ivle_maint_migrations "
                     f"(LIKE public.ivle_maint_migrations INCLUDING ALL){on_commit};\n"
                     "ALTER TABLE login ADD COLUMN planted int;\n")
    db.add_migration("20100101-02.sql", "SELECT 1;\n")
    migrations.apply_migrations(db.settings(), db.reporter)
    assert public_marker(db) == ["20090101-01", "20100101-01", "20100101-02"]
    again = migrations.apply_migrations(db.settings(), db.reporter)
    assert again.up_to_date and not again.applied


def test_role_and_timeouts_set_by_a_migration_do_not_carry_into_the_next(db: Site) -> None:
    db.add_migration("20100101-01.sql", "SET statement_timeout = 1;\nSET lock_timeout = 1;\n")
    db.add_migration("20100101-02.sql", "SELECT pg_sleep(0.2);\n"
                     "CREATE TABLE seen AS SELECT current_setting('statement_timeout') AS st, "
                     "current_setting('lock_timeout') AS lt, "
                     "current_setting('search_path') AS sp;\n")
    migrations.apply_migrations(db.settings(), db.reporter)
    # lock_timeout: the try's own ([database] ddl_lock_timeout, 2 s: db/retry.py),
    # never the 1 ms the previous migration SET.
    assert db.query("SELECT st, lt, sp FROM public.seen") == [("0", "2s", "public")]


def test_role_and_database_defaults_cannot_change_the_session(db: Site) -> None:
    """ALTER ROLE/DATABASE ... SET search_path: the session sends its own."""
    db.run_sql(f'CREATE SCHEMA evil; ALTER ROLE "{db.pg.ivle_user}" IN DATABASE "{db.dbname}" '
               "SET search_path = evil, public")
    db.add_migration("20100101-01.sql", "CREATE TABLE widgets (id int);\n")
    migrations.apply_migrations(db.settings(), db.reporter)
    assert "widgets" in tables_in(db, "public") and tables_in(db, "evil") == []
    assert public_marker(db)[-1] == "20100101-01"


# -- a hostile environment ----------------------------------------------------------

def hostile_environment(tmp_path: Path, site: Site) -> dict[str, str]:
    """Everything a careless or hostile shell may export, and traps that tell."""
    evil = tmp_path / "evil"
    evil.mkdir()
    trap = tmp_path / "trapped"
    for name in ("pg_dump", "psql", "invoke-rc.d", "systemctl", "sh", "env"):
        script = evil / name
        script.write_text(f"#!/bin/sh\necho {name} >> {trap}\nexit 0\n")
        script.chmod(0o755)
    bash_env = tmp_path / "bash_env"
    bash_env.write_text(f"echo BASH_ENV >> {trap}\n")
    services = tmp_path / "pg_service.conf"
    services.write_text("[evil]\nhost=127.0.0.1\nport=1\ndbname=evil\nuser=evil\n")
    return {
        "PATH": f"{evil}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "IVLE_MAINT_CONF": str(site.root / "etc" / "ivle-maint.conf"),
        "PGHOST": str(evil), "PGPORT": "1", "PGDATABASE": "evil", "PGUSER": "evil",
        "PGOPTIONS": "-c search_path=evil", "PGSERVICE": "evil",
        "PGSERVICEFILE": str(services), "PGSYSCONFDIR": str(tmp_path),
        "PGPASSFILE": str(tmp_path / "pgpass"), "PGSSLMODE": "require",
        "PGAPPNAME": "evil", "PGTZ": "Pacific/Kiritimati", "PGCLIENTENCODING": "LATIN1",
        "PGCONNECT_TIMEOUT": "1", "PGTARGETSESSIONATTRS": "read-only",
        "LANG": "tr_TR.UTF-8", "LC_ALL": "tr_TR.UTF-8", "LC_MESSAGES": "tr_TR.UTF-8",
        "LD_LIBRARY_PATH": str(evil), "IFS": "x", "BASH_ENV": str(bash_env),
        "ENV": str(bash_env), "CDPATH": str(evil), "HOME": str(evil),
    }


def test_hostile_environment_changes_nothing_ivle_maint_connects_to_or_runs(
        db: Site, tmp_path: Path) -> None:
    db.run_sql("CREATE SCHEMA evil")
    db.add_migration("20100101-01.sql", "CREATE TABLE widgets (id int);\n")
    db.settings(backup=True)
    env = hostile_environment(tmp_path, db)
    done = subprocess.run([sys.executable, "-m", "ivle_maint", "db", "migrate"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "widgets" in tables_in(db, "public") and tables_in(db, "evil") == []
    assert public_marker(db)[-1] == "20100101-01"
    assert not (tmp_path / "trapped").exists()  # no program of PATH's or BASH_ENV's ran
    assert len(list(db.backups.glob(f"{db.dbname}-*.dump"))) == 1  # the real pg_dump


def test_a_child_gets_only_the_policy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PGHOST": "/tmp/evil", "PGOPTIONS": "-c search_path=evil",
                        "LD_LIBRARY_PATH": "/tmp/evil", "PYTHONSTARTUP": "/tmp/evil.py",
                        "LANG": "tr_TR.UTF-8", "LC_ALL": "tr_TR.UTF-8", "IFS": "x",
                        "BASH_ENV": "/tmp/evil", "PATH": f"/tmp/evil:{os.environ['PATH']}",
                        "DPKG_MAINTSCRIPT_NAME": "postinst"}.items():
        monkeypatch.setenv(name, value)
    old = os.umask(0o077)
    try:
        done = system.run(["/bin/sh", "-c", "umask; /usr/bin/env"], keep_stdout=True,
                          env={"IVLECONF": "/etc/ivle"})
    finally:
        os.umask(old)
    lines = done.stdout.splitlines()
    assert lines[0] == "0022"
    env = dict(line.split("=", 1) for line in lines[1:])
    env.pop("PWD", None), env.pop("SHLVL", None), env.pop("_", None)  # the shell's own
    assert re.fullmatch(r"[0-9a-f]{32}", env.pop(environment.MARK))  # this command's own
    passed = {name: os.environ[name] for name in environment.PASS_THROUGH if name in os.environ}
    assert passed["DPKG_MAINTSCRIPT_NAME"] == "postinst"
    assert env == {"PATH": system.SBIN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "HOME": environment.home_of(os.geteuid()), "IVLECONF": "/etc/ivle", **passed}


def test_a_name_ivle_maint_does_not_set_is_refused_for_a_child() -> None:
    with pytest.raises(ValueError, match="LD_PRELOAD"):
        system.run(["/bin/true"], env={"LD_PRELOAD": "/tmp/evil.so"})

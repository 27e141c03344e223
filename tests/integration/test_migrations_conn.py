"""Connections, the advisory lock and file vetting, on real PostgreSQL servers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from ivle_maint.db import lock, migrations
from ivle_maint.errors import LockedError, MaintError
from ivle_maint.gates import environment
from ivle_sandbox import schema
from ivle_sandbox.postgres import ThrowawayPostgres, free_port
from support.lock_holders import Migrator
from support.migration_site import Site

pytestmark = pytest.mark.needs_postgres


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def baselined(site: Site) -> Site:
    """The fakes applied and baselined; one new migration pending."""
    for path in sorted(site.migrations.glob("*.sql")):
        path.unlink()
    site.add_migration("20090101-01.sql", "SELECT 1;\n")
    migrations.record_baseline(site.settings(), "20090101-01")
    site.add_migration("20100101-01.sql", "ALTER TABLE login ADD COLUMN locked_in int;\n")
    return site


# -- the advisory lock -------------------------------------------------------

HOLDER = """
import json, sys, time, psycopg2
conn = psycopg2.connect(**json.loads(sys.argv[1]), application_name="lock-holder-test")
with conn.cursor() as cur:
    cur.execute("SELECT pg_advisory_lock(%s)", [int(sys.argv[2])])
conn.commit()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def pending(site: Site) -> Site:
    return baselined(site)


@pytest.fixture
def holder(pending: Site) -> Iterator[subprocess.Popen[str]]:
    """Another runner, in another process, holding the migration lock."""
    site = pending
    dsn = site.pg.dsn(site.dbname, site.pg.ivle_user)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, json.dumps(dsn), str(lock.LOCK_ID)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_second_runner_waits_then_times_out(site: Site, holder: Any) -> None:
    started = time.monotonic()
    with pytest.raises(LockedError) as info:
        migrations.apply_migrations(site.settings(lock_timeout=1), site.reporter)
    assert 1.0 <= time.monotonic() - started < 4
    assert "still held by lock-holder-test (server pid" in str(info.value)
    assert info.value.resume == "ivle-maint db migrate" and info.value.exit_status == 75
    assert any(line.startswith("waiting up to 1s for the migration lock held by lock-holder-test")
               for line in site.reporter.lines)  # fmt: skip
    assert "locked_in" not in site.columns("login")


def test_lock_of_a_killed_runner_is_released(site: Site, holder: Any) -> None:
    runner = Migrator(site.settings(lock_timeout=30))
    runner.start()
    wait_for(lambda: any("waiting up to 30s" in line for line in runner.reporter.lines))
    assert runner.is_alive() and "locked_in" not in site.columns("login")
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup: the server notices the dead session
    runner.join(20)
    assert runner.error is None
    assert "got the migration lock" in runner.reporter.lines
    assert [a.key for a in runner.result.applied] == ["20100101-01"]


def test_two_runners_never_apply_the_same_migration(site: Site) -> None:
    baselined(site)
    site.add_migration("20100102-01.sql", "SELECT pg_sleep(0.5);\n")
    runners = [Migrator(site.settings(lock_timeout=30)) for _ in range(2)]
    for r in runners:
        r.start()
    for r in runners:
        r.join(30)
    assert [r.error for r in runners] == [None, None]
    applied = sorted(len(r.result.applied) for r in runners)
    assert applied == [0, 2]
    assert sum(r.result.up_to_date for r in runners) == 1
    rows = site.query("SELECT count(*) FROM ivle_maint_migrations WHERE mode <> 'baseline'")
    assert rows == [(2,)]


# -- connection failures -----------------------------------------------------


def test_wrong_password_is_one_line_without_the_password(site: Site) -> None:
    secret = "Wr0ng-s3cret-pw"
    started = time.monotonic()
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(password=secret), site.reporter)
    message = str(info.value)
    assert message == (
        f"cannot connect to database {site.dbname} as ivle at 127.0.0.1:{site.pg.port}: "
        'password authentication failed for user "ivle"'
    )
    assert secret not in " ".join(site.reporter.lines)
    assert time.monotonic() - started < 2  # not a reason to wait


def test_server_down_waits_bounded_then_fails_with_resume(site: Site) -> None:
    started = time.monotonic()
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(port=free_port(), wait_timeout=1), site.reporter)
    assert 1.0 <= time.monotonic() - started < 4
    assert "did not accept connections" in str(info.value)
    assert "within 1s ([database] wait_timeout): Connection refused" in str(info.value)
    assert info.value.resume == "ivle-maint db migrate"
    assert any("waiting up to 1s" in line for line in site.reporter.lines)


def test_unknown_database_fails_after_the_swap_grace(site: Site) -> None:
    """Not after wait_timeout: a missing database is waited for only as
    long as a full rollback's swap may take its name away
    (connect.RENAMED_AWAY_SECONDS; test_connect_waits.py)."""
    with pytest.raises(MaintError, match='database "no_such_db" does not exist'):
        migrations.status(site.settings(name="no_such_db", wait_timeout=30))


# -- a server of our own: restarts and peer authentication --------------------


@pytest.fixture(scope="module")
def own_pg(sandbox_dir: Path) -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres(sandbox_dir / "pg-migrations") as pg:
        schema.create_database(pg, "ivle_own", users=2)
        yield pg


def pg_ctl(pg: ThrowawayPostgres, *args: str) -> None:
    done = pg._run("pg_ctl", "-D", str(pg.pgdata), "-w", "-t", "30", *args)
    assert done.returncode == 0, done.stderr
    if "start" in args:
        pg.pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0])


def own_site(pg: ThrowawayPostgres, tmp_path: Path) -> Site:
    root = tmp_path / "own"
    (root / "migrations").mkdir(parents=True, mode=0o755)
    s = Site(pg, root, "ivle_own")
    s.settings()
    return s


def test_waits_for_a_restarting_server(own_pg: ThrowawayPostgres, tmp_path: Path) -> None:
    s = own_site(own_pg, tmp_path)
    settings = s.settings(wait_timeout=30)
    pg_ctl(own_pg, "-m", "fast", "stop")
    got: list[Any] = []
    thread = threading.Thread(
        target=lambda: got.append(migrations.status(settings, reporter=s.reporter))
    )
    thread.start()
    try:
        wait_for(lambda: any("not accepting connections yet" in ln for ln in s.reporter.lines))
        assert thread.is_alive()
    finally:
        pg_ctl(own_pg, "-l", str(own_pg.logfile), "start")
    thread.join(30)
    assert got and got[0].dbname == "ivle_own"
    assert s.reporter.lines[-1] == "PostgreSQL is accepting connections"


@pytest.mark.needs_root
def test_connect_as_postgres_uses_peer_auth(own_pg: ThrowawayPostgres, tmp_path: Path) -> None:
    hba = own_pg.pgdata / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(original.replace("local   all       postgres                 trust",
                                    "local   all       postgres                 peer"))  # fmt: skip
    pg_ctl(own_pg, "reload")
    try:
        kw = {"host": str(own_pg.socket_dir), "port": own_pg.port, "dbname": "ivle_own"}
        with pytest.raises(psycopg2.OperationalError, match="Peer authentication failed"):
            psycopg2.connect(user="postgres", **kw)  # root is not postgres: refused
        s = own_site(own_pg, tmp_path)
        s.add_migration("20100101-01.sql", "SELECT 1;\n")
        s.add_migration("20100102-01.sql", "CREATE TABLE peer_made (x int);\n")
        settings = s.settings(connect_as="postgres", backup=True)
        migrations.record_baseline(settings, "20100101-01")
        result = migrations.apply_migrations(settings, s.reporter)
        assert os.geteuid() == 0 and os.getegid() == 0  # switched back after connect()
        assert [a.key for a in result.applied] == ["20100102-01"]
        assert s.query("SELECT tableowner FROM pg_tables WHERE tablename = 'peer_made'") == [
            ("postgres",)
        ]
        # pg_dump ran as the postgres user, but the dump is root's and private.
        assert result.backup is not None
        st = result.backup.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
        assert st.st_size > 0
        migrations.backup_now(settings, s.reporter)
        assert "(to put it back: sudo -u postgres createdb " in s.reporter.lines[-1]
    finally:
        hba.write_text(original)
        pg_ctl(own_pg, "reload")


# -- who may write the migrations ----------------------------------------------


@pytest.mark.needs_root
def test_migrations_dir_writable_by_others_is_refused(site: Site) -> None:
    baselined(site)
    site.migrations.chmod(0o777)
    with pytest.raises(
        MaintError,
        match=(f"migrations directory {site.migrations}: writable by others \\(mode 0777\\)"
               ".*chmod go-w"),
    ):
        migrations.apply_migrations(site.settings(), site.reporter)
    with pytest.raises(MaintError, match="writable by others"):
        migrations.preflight(site.settings())
    assert "locked_in" not in site.columns("login")


@pytest.mark.needs_root
def test_migration_file_owned_by_a_user_is_refused(site: Site) -> None:
    baselined(site)
    os.chown(site.migrations / "20100101-01.sql", 65534, 65534)
    with pytest.raises(MaintError, match=r"20100101-01\.sql: owned by uid 65534, not root"):
        migrations.apply_migrations(site.settings(), site.reporter)
    assert "locked_in" not in site.columns("login")


def test_password_reaches_pg_dump_only_through_its_own_environment(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGPASSWORD in pg_dump's environment: never argv, never a file a SIGKILL leaves."""
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def spy(argv: list[str], **kwargs: Any) -> Any:
        seen.append((argv, dict(kwargs["env"])))
        return real_run(argv, **kwargs)

    monkeypatch.setenv("PGPASSFILE", "/nonexistent/ignored")
    monkeypatch.setattr(subprocess, "run", spy)
    path = migrations.backup_now(site.settings(), site.reporter)
    assert path.exists()
    ((argv, env),) = seen
    assert site.pg.ivle_password not in " ".join(argv)
    assert env["PGPASSWORD"] == site.pg.ivle_password
    assert env["PGPASSFILE"] == environment.NO_PASSFILE  # not the inherited one
    assert "PGPASSWORD" not in os.environ  # ivle-maint's own environment stays clean
    assert not list(Path(tempfile.gettempdir()).glob("ivle-maint-pgpass-*"))


def test_no_privilege_for_the_marker_is_one_line(site: Site, postgres: Any) -> None:
    from support.migration_site import create_empty_database

    name = site.dbname + "_noperm"
    create_empty_database(postgres, name)
    admin = postgres.connect(name)
    admin.autocommit = True
    with admin.cursor() as cur:  # a database the ivle role may use but not change
        cur.execute(f'ALTER DATABASE "{name}" OWNER TO postgres')
        cur.execute("ALTER SCHEMA public OWNER TO postgres")
    admin.close()
    try:
        site.add_migration("20990101-01.sql", "SELECT 1;\n")
        with pytest.raises(MaintError) as info:
            migrations.apply_migrations(site.settings(name=name), site.reporter)
        assert str(info.value) == f"database {name}: permission denied for schema public"
    finally:
        schema.drop_database(postgres, name)

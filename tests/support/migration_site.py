"""The migration tests' site: a fresh IVLE database and settings per test.

The fixture ``site`` (tests/integration/conftest.py) gives each test

    a Site: its own database (a copy of the sandbox's IVLE template,
           3 users), ivle.conf and ivle-maint.conf in tmp_path, a root-owned
           migrations directory holding tests/fakes/migrations, a backup dir.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from ivle_maint.config import Settings, load_settings
from ivle_maint.output import RecordingReporter
from ivle_sandbox import schema

FAKES = Path(__file__).resolve().parents[1] / "fakes" / "migrations"

IVLE_CONF = """\
# ivle.conf for a migration test
[database]
host = {host}
port = {port}
name = {name}
username = {user}
password = {password}
"""

MAINT_CONF = """\
[node]
role = master
name = testnode

[paths]
ivle_conf_dir = {root}/etc
migrations = {root}/migrations
backup = {root}/backups
state = {root}/state
log = {root}/log
run = {root}/run

[database]
connect_as = {connect_as}
socket_dir = {socket_dir}
wait_timeout = {wait_timeout}
lock_timeout = {lock_timeout}
backup = {backup}
backup_keep = {backup_keep}
"""


class Site:
    """One test's database, configuration and migrations directory."""

    def __init__(self, pg: Any, root: Path, dbname: str) -> None:
        self.pg, self.root, self.dbname = pg, root, dbname
        self.migrations = root / "migrations"
        self.backups = root / "backups"
        self.reporter = RecordingReporter()
        self.conf = {
            "connect_as": "ivle-conf",
            "socket_dir": str(pg.socket_dir),
            "wait_timeout": 5,
            "lock_timeout": 5,
            "backup": False,
            "backup_keep": 3,
        }
        self.db = {
            "host": "127.0.0.1",
            "port": pg.port,
            "name": dbname,
            "user": pg.ivle_user,
            "password": pg.ivle_password,
        }

    def settings(self, **changes: Any) -> Settings:
        """Write ivle.conf and ivle-maint.conf with changes, and load them."""
        for key, value in changes.items():
            (self.db if key in self.db else self.conf)[key] = value
        (self.root / "etc").mkdir(exist_ok=True)
        (self.root / "etc" / "ivle.conf").write_text(IVLE_CONF.format(**self.db))
        path = self.root / "etc" / "ivle-maint.conf"
        path.write_text(MAINT_CONF.format(root=self.root, **self.conf))
        return load_settings(str(path))

    def connect(self, user: str | None = None) -> Any:
        """A connection to this test's database (the ivle owner by default)."""
        return self.pg.connect(self.dbname, user or self.pg.ivle_user)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def run_sql(self, text: str) -> None:
        """Run a whole file's text as psql would (autocommit, its own BEGIN)."""
        conn = self.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(text)
        finally:
            conn.close()

    def marker(self) -> dict[str, str]:
        """key -> mode of every marker row; {} without a marker table."""
        if not self.query("SELECT to_regclass('ivle_maint_migrations')")[0][0]:
            return {}
        return dict(self.query("SELECT key, mode FROM ivle_maint_migrations ORDER BY key"))

    def columns(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            [table],
        )
        return [r[0] for r in rows]

    def table_exists(self, table: str) -> bool:
        return bool(self.query("SELECT to_regclass(%s)", [table])[0][0])

    def add_migration(self, name: str, text: str) -> Path:
        path = self.migrations / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def keys(self) -> list[str]:
        """The shipped keys, in order."""
        from ivle_maint.db.discovery import discover

        return [m.key for m in discover(self.migrations)]


def create_empty_database(pg: Any, name: str) -> None:
    conn = pg.connect("postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 OWNER "{pg.ivle_user}"')
    finally:
        conn.close()


def fresh_site(pg: Any, tmp_path: Path, prefix: str) -> Site:
    """A new IVLE database (PREFIX_<random>) with three users, and a site
    under tmp_path shipping the fake migrations; drop it with
    ivle_sandbox.schema.drop_database(pg, site.dbname)."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:10]}"
    schema.create_database(pg, dbname, users=3)
    root = tmp_path / "site"
    root.mkdir()
    shutil.copytree(FAKES, root / "migrations", ignore=shutil.ignore_patterns("*~"))
    (root / "migrations").chmod(0o755)
    return Site(pg, root, dbname)

"""Sessions that hold locks a migration needs, and a migration run in a
thread beside them (the lock-safe application's tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ivle_maint.config import Settings, load_settings
from ivle_maint.db import migrations
from ivle_maint.output import RecordingReporter
from support.db_site import add_settings
from support.migration_site import Site


def reader(site: Site, table: str = "login") -> Any:
    """Another session in an open transaction that has read TABLE (it holds
    ACCESS SHARE on it until it ends)."""
    conn = site.connect()
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        cur.fetchall()
    return conn


def in_transaction(site: Site, pid: int) -> bool:
    """Server session PID is still inside a transaction (its locks held)."""
    rows = site.query("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
    return bool(rows) and rows[0][0] in ("idle in transaction", "active")


def xact_age(site: Site, pid: int) -> float:
    rows = site.query("SELECT extract(epoch FROM now() - xact_start) FROM pg_stat_activity "
                      "WHERE pid = %s", [pid])
    return float(rows[0][0]) if rows and rows[0][0] is not None else 0.0


def settings_with(site: Site, **database: object) -> Settings:
    """The site's settings plus [database] keys its template does not know."""
    return load_settings(str(add_settings(site, **database)))


class Migrator(threading.Thread):
    """apply_migrations() in a thread, keeping its result or exception."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.reporter = RecordingReporter()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = migrations.apply_migrations(self.settings, self.reporter)
        except BaseException as exc:
            self.error = exc

    def said(self, words: str) -> list[str]:
        return [line for line in list(self.reporter.lines) if words in line]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll until PREDICATE holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)

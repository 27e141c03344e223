"""The migration marker's rows (ivle_maint_migrations) are the database's,
which anyone with IVLE's database login may write: a row's host, mode,
key or accepted-by holding a newline, a carriage return or an escape
sequence is shown by `db status` as one escaped field of its own row,
never as a line of its own (a forged `applied` row, a fake prompt).  A key
that is no migration key is refused (db.marker.check_keys) in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.migration_site import Site

REPO = Path(__file__).resolve().parents[2]
FORGED = "applied      20991231-01    2099-12-31 00:00 transaction on forged"
HOSTILE = st.lists(st.sampled_from([f"\n{FORGED}", f"\r{FORGED}", "\x1b[2K\r", "\x1b]8;;http://x\x07",
                                    "\u202e", "\x9b2J", "\u2028", "\x85", "\x00", "x"]),
                   min_size=1, max_size=4).map("".join)


def _status(site: Site) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ivle_maint", "--config", str(site.root / "etc" / "ivle-maint.conf"),
         "db", "status"],
        env={k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"},
        cwd=REPO, capture_output=True, text=True, check=False)


@pytest.fixture
def populated(site: Site) -> Site:
    """The site's database with IVLE's tables of 20090105 (once for every example)."""
    site.run_sql((site.migrations / "20090105.sql").read_text())
    return site


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=HOSTILE, mode=HOSTILE, key=HOSTILE, by=HOSTILE)
def test_db_status_shows_each_marker_row_as_one_line_whatever_it_holds(
        populated: Site, host: str, mode: str, key: str, by: str) -> None:
    site = populated
    conn = site.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS ivle_maint_migrations")
        assert subprocess.run(
            [sys.executable, "-m", "ivle_maint", "--config",
             str(site.root / "etc" / "ivle-maint.conf"), "db", "baseline", "20090105"],
            env={k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"},
            cwd=REPO, capture_output=True, check=False).returncode == 0
        done = _status(site)
        assert done.returncode == 0, done.stderr
        shipped = len(done.stdout.splitlines())  # a line a file, and the first two
        with conn.cursor() as cur:  # a shipped key's row, and one no file has
            cur.execute("UPDATE ivle_maint_migrations SET host = %s, mode = %s, "
                        "class_override = 'additive', class_override_by = %s "
                        "WHERE key = '20090105'", (host.replace("\x00", ""),
                                                   mode.replace("\x00", ""),
                                                   by.replace("\x00", "")))
            cur.execute("INSERT INTO ivle_maint_migrations (key, filename, checksum, mode, "
                        "host, ivle_maint_version) SELECT %s, filename, checksum, mode, host, "
                        "ivle_maint_version FROM ivle_maint_migrations WHERE key = '20090105'",
                        ("20991230-01",))
        done = _status(site)
        with conn.cursor() as cur:
            cur.execute("UPDATE ivle_maint_migrations SET key = %s WHERE key = '20991230-01'",
                        ("k" + key.replace("\x00", ""),))
        refused = _status(site)
    finally:
        conn.close()
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    # The rows it had, one line more for the accepted class, one for the key no file has.
    assert len(out) == shipped + 2, done.stdout
    assert all(line.isprintable() for line in out), done.stdout
    assert not any(line.startswith(("applied      2099", "\x1b")) for line in out), done.stdout
    assert refused.returncode != 0 and refused.stdout == "", refused.stdout
    said = refused.stderr.splitlines()
    assert len(said) == 1 and said[0].isprintable(), refused.stderr

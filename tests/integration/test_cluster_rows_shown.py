"""The cluster table's rows are the database's, which anyone with IVLE's
database login may write: a row whose host, step, media or note is
megabytes long is shown by `cluster status` bounded (table.TOLD), not
whole and padded into every row of the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import table
from support.migration_site import Site

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("host", "step", "media", "note")


def _status(site: Site) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ivle_maint", "--config",
         str(site.root / "etc" / "ivle-maint.conf"), "cluster", "status"],
        env={k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"},
        cwd=REPO, capture_output=True, text=True, check=False)


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), size=st.integers(1_000, 1_000_000),
       piece=st.sampled_from(["x", "\x1b[2J", "\n", "\u202e", "\u4e00"]))
def test_cluster_status_bounds_a_rows_enormous_field(
        site: Site, field: str, size: int, piece: str) -> None:
    conn = site.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {table.NODES}")
        for name in ("slave1", "slave2", "slave3"):
            table.upsert(conn, {"name": name, "role": "slave", "host": "h", "instance": "i",
                                "version": "1.0", "serving": "1.0", "phase": "idle",
                                "note": "n"})
        with conn, conn.cursor() as cur:
            cur.execute(f"UPDATE {table.NODES} SET {field} = %s WHERE name = 'slave2'",
                        ((piece * size)[:size],))
    finally:
        conn.close()
    done = _status(site)
    assert done.returncode in (0, 1), done.stderr[:2000]
    # 1000 characters of a note, each escaped at most as \\uNNNN, and the table.
    widest = max(map(len, done.stdout.splitlines()))
    assert widest <= 7_000, f"a line of {widest} characters"
    assert sum(map(len, done.stdout.splitlines())) <= 20_000
    assert all(line.isprintable() for line in done.stdout.splitlines())

"""A row's last_seen is the database's, which anyone with IVLE's database
login may write: a time Python cannot hold (year 10000, a year BC) or none
at all ('infinity') failed table.nodes, so every reader of the table, the
master's waits and the `cluster forget --force` the gate advises for that
row alike.  The gate reads it as unknown and refuses the row, taken as a
node that may serve old code; the row can still be forgotten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import admin, table, trust
from ivle_maint.cluster.waits import describe
from ivle_maint.output import RecordingReporter
from support.migration_site import Site

REPO = Path(__file__).resolve().parents[2]

YEARS = st.sampled_from([1, 2, 1970, 2026, 9998, 9999, 10000, 294275]) | st.integers(1, 294275)
# PostgreSQL's range: 4713 BC to 294276 AD.
TIMES = st.sampled_from(["infinity", "-infinity", "epoch", "now"]) | st.builds(
    lambda year, bc, zone: f"{year % 4713 + 1 if bc else year:04d}-"
                           f"{'12-31 23:30' if year % 2 else '01-01 00:30'}:00"
                           f"{zone}{' BC' if bc else ''}",
    YEARS, st.booleans(), st.sampled_from(["+00", "+14", "-12"]))


def _python_cannot_hold(when: str) -> bool:
    if when.endswith(("infinity", " BC")):
        return True
    return when[0].isdigit() and int(when.split("-", maxsplit=1)[0]) >= 10000


def _rows(site: Site, when: str) -> None:
    conn = site.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {table.NODES}")
        for name in ("slave1", "slave2"):
            table.upsert(conn, {"name": name, "role": "slave", "host": "h", "instance": "i",
                                "version": "1.0", "serving": None, "phase": "idle",
                                "note": "n"})
        with conn, conn.cursor() as cur:
            cur.execute(f"UPDATE {table.NODES} SET last_seen = %s WHERE name = 'slave2'",
                        [when])
    finally:
        conn.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=TIMES)
def test_a_rows_last_seen_python_cannot_hold_is_refused_and_can_be_forgotten(
        site: Site, when: str) -> None:
    _rows(site, when)
    conn = site.connect()
    try:
        rows = {r.name: r for r in table.nodes(conn)}
    finally:
        conn.close()
    row = rows["slave2"]
    assert rows["slave1"].invalid is None and rows["slave1"].age is not None
    if _python_cannot_hold(when):
        assert row.invalid is not None and "last_seen" in row.invalid, row
        assert row.last_seen is None and row.age is None and row.serving == table.UNKNOWN
    elif 2 <= int(when.split("-", maxsplit=1)[0] if when[0].isdigit() else 2026) <= 9998:
        assert row.invalid is None and row.last_seen is not None and row.age is not None
    describe(row)
    trust.forget_refusals(row, trust.Seen(None, None))
    settings_ = site.settings()
    assert admin.forget(settings_, RecordingReporter(), "slave2", force=True)


def test_cluster_status_and_forget_of_a_row_seen_in_year_10000_or_never(site: Site) -> None:
    config = str(site.root / "etc" / "ivle-maint.conf")
    env = {k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"}
    for when in ("10000-01-01", "infinity"):
        _rows(site, when)
        for args in (("cluster", "status"), ("cluster", "forget", "--force", "slave2")):
            done = subprocess.run([sys.executable, "-m", "ivle_maint", "--config", config,
                                   *args], env=env, cwd=REPO, capture_output=True, text=True,
                                  check=False)
            assert "internal error" not in done.stderr and "Traceback" not in done.stderr, \
                done.stderr
            assert "cannot subtract" not in done.stderr, done.stderr
            if args[1] == "status":
                assert "slave2" in done.stdout, done.stdout
            else:
                assert done.returncode == 0, done.stderr

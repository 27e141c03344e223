"""The cluster reads the migration marker through its row gate (db.marker.applied).

A marker row is the database's, which anyone with IVLE's database login
may write.  A slave waiting for the master's migrations, and `cluster
status`, read the marker's keys: one spelled otherwise (20090212-1,
' 20090212-01', 20090212-01.sql) is refused in one line with the
statement that fixes it, as `db status` and `db migrate` refuse it.
Before, the cluster read the keys raw: the slave took that migration for
missing and waited out [cluster] master_timeout (30 minutes, its web
server down), then blamed the master.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import waits
from ivle_maint.cluster.presence import Presence
from ivle_maint.config import load_settings
from ivle_maint.db import marker
from ivle_maint.db.discovery import discover
from ivle_maint.errors import MaintError
from support.migration_site import Site

SPELLINGS = st.sampled_from([
    lambda k: k.replace("-0", "-"), lambda k: f" {k}", lambda k: f"{k}.sql",
    lambda k: f"{k}\n", lambda k: k.replace("-", "_"), lambda k: k + "0"])


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 100), spelled=SPELLINGS)
def test_a_marker_key_spelled_otherwise_stops_a_slaves_wait_in_one_line(
        site: Site, which: int, spelled) -> None:
    site.settings()
    path = site.root / "etc" / "ivle-maint.conf"
    path.write_text(path.read_text() + "[cluster]\nmaster_timeout = 3\npoll = 0.2\n")
    settings_ = load_settings(str(path))
    keys = [m.key for m in discover(site.migrations)]
    odd = keys[which % len(keys)]
    assume(spelled(odd) != odd)
    conn = site.connect()
    try:
        marker.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {marker.TABLE}")
            for key in keys:
                cur.execute(f"INSERT INTO {marker.TABLE} (key, filename, checksum, mode, "
                            "host, ivle_maint_version) VALUES (%s, 'f', 'c', 'transaction', "
                            "'h', '0')", [spelled(key) if key == odd else key])
    finally:
        conn.close()
    presence = Presence(settings_, site.reporter)
    ctx = SimpleNamespace(cluster=presence, settings=settings_, new="1.1", rollback=None,
                          code_is_new=True, migrations=site.migrations, reporter=site.reporter,
                          resume="ivle-maint rerun")
    try:
        with pytest.raises(MaintError) as raised:
            waits.wait_for_master(ctx, "start-web")
    finally:
        presence.close()
    line = str(raised.value)
    assert "is not a migration key" in line and marker.TABLE in line, line

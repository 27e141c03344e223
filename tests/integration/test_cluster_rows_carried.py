"""A full rollback carries the cluster's rows from the live database into the
restored one (rollback/cluster_rows.carry) just before the swap.  The rows
are the database's, which anyone with IVLE's database login may write: a
last_seen Python cannot hold (year 10000, a year BC, 'infinity') failed the
copy (`ValueError: year 10000 is out of range`), and with it the rollback's
migrate step, at every try.  The rows are copied as PostgreSQL writes them
(text), whatever they hold."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import table
from ivle_maint.db.connect import params_from_settings
from ivle_maint.rollback import cluster_rows
from ivle_sandbox import schema
from support.migration_site import Site

# PostgreSQL's range: 4713 BC to 294276 AD.
TIMES = st.sampled_from(["infinity", "-infinity", "epoch", "now"]) | st.builds(
    lambda year, bc: f"{year % 4713 + 1 if bc else year:04d}-06-15 12:00:00+00"
                     f"{' BC' if bc else ''}",
    st.sampled_from([1, 9999, 10000, 294275]) | st.integers(1, 294275), st.booleans())


def _rows(conn: Any, name: str) -> list[str]:
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT t::text FROM {name} t ORDER BY 1")
        return [row[0] for row in cur.fetchall()]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seen=TIMES, chosen=TIMES)
def test_the_cluster_rows_are_carried_whatever_their_times(site: Site, seen: str,
                                                          chosen: str) -> None:
    restored = f"{site.dbname}_restored"
    schema.create_database(site.pg, restored)
    conn = site.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {table.NODES}")
            cur.execute(f"DELETE FROM {table.MEDIA}")
        for name in ("slave1", "slave2"):
            table.upsert(conn, {"name": name, "role": "slave", "host": "h", "instance": "i",
                                "version": "1.0", "serving": None, "phase": "idle",
                                "note": "n", "mounts": 3, "consoles": 0,
                                "runner": "0a1b2c3d4e5f.effffffc.42.1f"})
        table.claim_media(conn, "1.1", "1.1", "slave1")
        with conn, conn.cursor() as cur:
            cur.execute(f"UPDATE {table.NODES} SET last_seen = %s WHERE name = 'slave2'",
                        [seen])
            cur.execute(f"UPDATE {table.MEDIA} SET chosen_at = %s", [chosen])
        live = {name: _rows(conn, name) for name in cluster_rows.CARRIED}
        params = params_from_settings(site.settings())
        carried = cluster_rows.carry(params, site.dbname, restored, grantee=None)
        assert len(carried) == 2, carried
        other = site.pg.connect(restored, site.pg.ivle_user)
        try:
            assert {name: _rows(other, name) for name in cluster_rows.CARRIED} == live
        finally:
            other.close()
    finally:
        conn.close()
        schema.drop_database(site.pg, restored)

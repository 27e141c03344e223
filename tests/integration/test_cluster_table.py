"""The cluster table of a site that ran an earlier ivle-maint gains the new
columns (jail mounts, consoles) on the first connection; nothing is lost."""

from __future__ import annotations

import pytest

from ivle_maint.cluster import table
from ivle_sandbox import schema
from ivle_sandbox.cluster import build_cluster
from support.cluster_helpers import PATIENT, cli

pytestmark = [pytest.mark.needs_postgres]

# ivle_maint_nodes as the first release created it.
FIRST_NODES = """
CREATE TABLE ivle_maint_nodes (
    name text PRIMARY KEY, role text NOT NULL, host text NOT NULL, instance text NOT NULL,
    version text, serving text, target text, phase text NOT NULL, step text, media text,
    note text, last_seen timestamptz NOT NULL DEFAULT now());
CREATE TABLE ivle_maint_media (
    value text PRIMARY KEY, version text NOT NULL, chosen_by text NOT NULL,
    chosen_at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO ivle_maint_nodes (name, role, host, instance, version, serving, phase)
    VALUES ('slave1', 'slave', 'web1', 'abc', '1.0', '1.0', 'idle');
"""


def test_an_earlier_table_gains_the_jail_columns_and_keeps_its_rows(postgres):
    schema.create_database(postgres, "ivle_table_upgrade")
    conn = postgres.connect("ivle_table_upgrade", postgres.ivle_user)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(FIRST_NODES)
        table.ensure(conn)
        (row,) = table.nodes(conn)
        assert (row.name, row.serving, row.mounts, row.consoles) == ("slave1", "1.0", None, None)
        table.upsert(conn, {"name": "slave1", "role": "slave", "host": "web1",
                            "instance": "abc", "version": "1.0", "target": "1.1",
                            "phase": "unpack", "mounts": 0, "consoles": 0})
        (row,) = table.nodes(conn)
        assert (row.phase, row.mounts, row.consoles) == ("unpack", 0, 0)
        table.ensure(conn)  # again: nothing to do
    finally:
        conn.close()
        schema.drop_database(postgres, "ivle_table_upgrade")


@pytest.mark.needs_root
def test_a_table_from_an_older_ivle_maint_gets_the_new_columns_when_it_may(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave, pg = cluster.slaves[0], cluster.master.pg
    conn = pg.connect(cluster.master.dbname)  # as the superuser
    with conn, conn.cursor() as cur:  # as an older ivle-maint left it, owned by postgres
        cur.execute("ALTER TABLE ivle_maint_nodes DROP COLUMN machine, DROP COLUMN probe_url")
        cur.execute("ALTER TABLE ivle_maint_nodes OWNER TO postgres")
        cur.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ivle_maint_nodes TO ivle")
    done = cli(slave, "cluster", "register")  # may not ALTER it: works without them
    assert done.returncode == 0, done.stderr
    assert cli(slave, "cluster", "status").returncode == 0
    with conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE ivle_maint_nodes OWNER TO ivle")
    assert cli(slave, "cluster", "register").returncode == 0
    with conn, conn.cursor() as cur:
        cur.execute("SELECT machine, probe_url FROM ivle_maint_nodes WHERE name = 'slave1'")
        assert cur.fetchone() == (f"sandbox-{slave.root.name}",
                                  f"http://127.0.0.1:{slave.web_port}/")
    conn.close()

"""The cluster's waits and rows across PostgreSQL restarts and outages: the
slaves' waits survive a quick restart, the master's a long outage (its
failure recorded), and a final row the database missed is written by the
next run.

Each test drives real nodes (own roots, real init-script stand-ins), one
real PostgreSQL server and ivle-maint as separate processes, as dpkg
runs it; each failed on the code before its fix (issue 13's defects).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ivle_maint.cluster import table
from ivle_maint.cluster.presence import Presence
from ivle_maint.config import load_settings
from ivle_maint.output import RecordingReporter
from ivle_sandbox.cluster import build_cluster
from ivle_sandbox.postgres import ThrowawayPostgres
from support.cluster_helpers import (
    PATIENT,
    SLAVES,
    assert_upgraded,
    cli,
    join,
    node_rows,
    start_sequences,
    wait_rows,
)
from support.upgrade_helpers import postinst, preinst, set_setting, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]


def pg_ctl(pg: ThrowawayPostgres, *args: str) -> None:
    done = pg._run("pg_ctl", "-D", str(pg.pgdata), "-l", str(pg.logfile), "-w", "-t", "30",
                   *args)
    assert done.returncode == 0, done.stderr
    if "stop" not in args:
        pg.pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0])


def test_waiting_slaves_survive_a_quick_postgresql_restart(node_factory):
    cluster = build_cluster(node_factory, cluster=PATIENT)
    runs, slaves = start_sequences(cluster.slaves)
    wait_rows(cluster.master, SLAVES, "waiting")
    started = time.monotonic()
    pg_ctl(cluster.master.pg, "-m", "fast", "restart")  # as apt on the master may do
    assert time.monotonic() - started < 5
    time.sleep(0.5)  # every slave looks at least once more across the restart
    (master_run,), master = start_sequences([cluster.master])
    join(slaves + master)
    assert master_run.ok() and all(run.ok() for run in runs), \
        "\n".join(run.text() for run in [*runs, master_run])
    assert any("reconnected to database" in run.text() for run in runs)
    assert_upgraded(cluster)


def test_the_masters_wait_survives_a_long_outage_and_its_failure_is_recorded(node_factory):
    cluster = build_cluster(node_factory, cluster={"master_timeout": 60, "slaves_timeout": 8})
    (master_run,), master = start_sequences([cluster.master])
    wait_rows(cluster.master, ["master"], "waiting")
    pg_ctl(cluster.master.pg, "-m", "fast", "stop")
    time.sleep(5)  # several seconds without a server
    pg_ctl(cluster.master.pg, "start")
    join(master)
    # The wait itself went on after the outage and timed out as a wait does.
    assert "reconnected to database" in master_run.text(), master_run.text()
    assert "slaves still serve code older than 1.1 after 8s" in master_run.text()
    assert node_rows(cluster.master)["master"]["phase"] == "failed"


def test_a_final_row_the_database_missed_is_written_by_the_next_run(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    pg = cluster.master.pg
    assert preinst(slave).returncode == 0
    unpack(slave)
    set_setting(slave, "database", "wait_timeout", 1)
    pg_ctl(pg, "-m", "fast", "stop")
    try:
        failed = postinst(slave)  # cannot even look for the migrations
    finally:
        pg_ctl(pg, "start")
    assert failed.returncode == 1
    assert "the next ivle-maint that reaches the database records" in failed.stderr
    assert node_rows(cluster.master)["slave1"]["phase"] != "failed"  # not written yet
    assert cli(slave, "cluster", "status").returncode == 0  # reaches the database
    assert node_rows(cluster.master)["slave1"]["phase"] == "failed"


def test_a_loss_first_seen_by_a_row_write_is_reported_over_by_the_next_query(node_factory):
    """Steps that run at the same time share one link: whichever call meets
    the dropped connection first (here the row write, which then writes on
    a new connection: a rollback's database swap ends every session), the
    reconnection is said once."""
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    settings = load_settings(str(cluster.master.maint_conf))
    reporter = RecordingReporter()
    presence = Presence(settings, reporter)
    assert presence.enabled
    row = presence.idle_row("1.0", "1.0", "test")
    presence.write(row, strict=True)
    pid = presence.connection().get_backend_pid()
    admin = cluster.master.pg.connect("postgres")
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        admin.close()
    presence.write(row)  # meets the loss: written again on a new connection
    assert not any("cluster table not updated" in line for line in reporter.lines), \
        reporter.lines
    names = {r.name for r in presence.query(table.nodes)}
    assert "master" in names
    assert sum("reconnected to database" in line for line in reporter.lines) == 1, reporter.lines
    presence.close()


def test_a_wait_wakes_when_another_node_changes_its_row_never_for_its_own(node_factory):
    """Waits for other nodes sleep on PostgreSQL's NOTIFY (table.upsert), not
    on [cluster] poll: with the interval an hour, another node's row change
    still ends the wait; this node's own writes never do, nor another's
    row written again unchanged (each waiting node writes its row at every
    look: the waits would wake each other without pause)."""
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    master = Presence(load_settings(str(cluster.master.maint_conf)), RecordingReporter())
    slave = Presence(load_settings(str(cluster.slaves[0].maint_conf)), RecordingReporter())
    try:
        master.write(master.idle_row("1.0", "1.0", "test"), strict=True)
        slave.write(slave.idle_row("1.0", "1.0", "test"), strict=True)
        # What was sent before the wait began: a round trip brings in every
        # notification of a transaction committed before it, then drained.
        master.query(table.nodes)
        master.settle(0.0)
        slave.write(slave.idle_row("1.0", "1.0", "test"), strict=True)  # unchanged
        master.query(table.nodes)  # brings in what the slave's commit sent
        assert master.connection().notifies == []
        lock = threading.Lock()  # one connection, one thread at a time (runner._SerialLink)

        def serial(call: Any) -> Any:
            with lock:
                return call()
        waiter = threading.Thread(target=master.settle, args=(3600.0, serial), daemon=True)
        waiter.start()
        with lock:
            master.write(master.idle_row("1.0", "1.0", "its own"), strict=True)
        waiter.join(1.0)
        assert waiter.is_alive()  # its own row: still waiting
        slave.write(slave.idle_row("1.0", "1.0", "changed"), strict=True)
        waiter.join(60.0)
        assert not waiter.is_alive()
    finally:
        master.close()
        slave.close()

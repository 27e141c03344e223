"""A cluster on one machine: one master, three slaves, one real database.

Each node is its own sandbox root; the nodes' upgrades run as dpkg runs
them (preinst, unpack, postinst: separate processes), in many orders.
The slaves mount their jails from the master's jail tree (a bind mount
standing in for NFS).  Every order must end with every node on 1.1 and
up, one media version, the migrations applied once by the master, and no
slave's web server started on the new code before the master's
migrations, jail rebuild, user jails and usrmgt restart
(cluster_helpers.assert_upgraded).
"""

from __future__ import annotations

import pytest

from ivle_sandbox.cluster import build_cluster, configure
from ivle_sandbox.releases import OLD
from support.cluster_helpers import (
    PATIENT,
    SLAVES,
    assert_upgraded,
    cli,
    join,
    marker_rows,
    random_schedule,
    run_concurrently,
    start_sequences,
    wait_rows,
    web_events,
)
from support.upgrade_helpers import NEW_KEYS, postinst, preinst, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]

IMPATIENT = {"master_timeout": 1.5, "slaves_timeout": 1.5}
RESUME = "ivle-maint: resume with: dpkg --configure -a  (or: ivle-maint rerun)"


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_overlapping_orders_end_safe(node_factory, seed):
    cluster = build_cluster(node_factory, cluster=PATIENT)
    runs = run_concurrently(random_schedule(cluster, seed, spread=4.0))
    assert all(run.ok() for run in runs), "\n".join(run.text() for run in runs)
    assert_upgraded(cluster)


def test_master_first_waits_for_every_slave_to_go_down(node_factory):
    cluster = build_cluster(node_factory, cluster=PATIENT)
    (master_run,), master = start_sequences([cluster.master])
    rows = wait_rows(cluster.master, ["master"], "waiting")
    assert rows["master"]["step"] == "migrate"
    assert all(name in rows["master"]["note"] for name in SLAVES)
    assert marker_rows(cluster.master)[-1][0] == "20090212-01"  # nothing migrated yet
    runs, slaves = start_sequences(cluster.slaves, (0.5, 0, 0))
    join(master + slaves)
    assert master_run.ok() and all(run.ok() for run in runs)
    assert "waiting for the slaves to stop serving the old code" in master_run.text()
    assert_upgraded(cluster)


def test_slaves_first_wait_for_the_masters_migrations(node_factory):
    cluster = build_cluster(node_factory, cluster=PATIENT)
    runs, slaves = start_sequences(cluster.slaves)
    rows = wait_rows(cluster.master, SLAVES, "waiting")
    for name in SLAVES:
        assert rows[name]["step"] == "start-web" and rows[name]["serving"] is None
        # No marker yet: the master has not even recorded its baseline.
        assert "5 migration(s) of 1.1" in rows[name]["note"]
    assert not any(slave.service_running("apache2") for slave in cluster.slaves)
    (master_run,), master = start_sequences([cluster.master])
    join(slaves + master)
    assert master_run.ok() and all(run.ok() for run in runs)
    assert all("waiting for the master (migrations, jail, user jails, usrmgt)" in run.text()
               for run in runs)
    assert_upgraded(cluster)


def test_serial_slaves_first_fail_down_then_resume(node_factory):
    cluster = build_cluster(node_factory, cluster=IMPATIENT)
    for slave in cluster.slaves:  # one apt run after the other
        assert preinst(slave).returncode == 0
        unpack(slave)
        failed = postinst(slave)
        assert failed.returncode == 1
        assert "the master's migrations are still missing after 1.5s ([cluster] " \
            "master_timeout), web server left down: 5 migration(s) of 1.1" in failed.stderr
        assert RESUME in failed.stderr
        assert not slave.service_running("apache2")  # down: no new code on the old schema
    rows = wait_rows(cluster.master, SLAVES, "failed")
    assert {rows[name]["step"] for name in SLAVES} == {"start-web"}
    assert preinst(cluster.master).returncode == 0
    unpack(cluster.master)
    done = postinst(cluster.master)  # every slave is down: no wait
    assert done.returncode == 0 and "no slave serves the old code" in done.stderr
    for slave in cluster.slaves:  # dpkg --configure -a
        assert postinst(slave).returncode == 0
    assert_upgraded(cluster)


def test_serial_master_first_fails_without_migrating_then_resumes(node_factory):
    cluster = build_cluster(node_factory, cluster=IMPATIENT)
    master = cluster.master
    assert preinst(master).returncode == 0
    unpack(master)
    failed = postinst(master)
    assert failed.returncode == 1 and RESUME in failed.stderr
    assert "slaves still serve code older than 1.1 after 1.5s ([cluster] slaves_timeout), " \
        "nothing migrated: slave1 (slave, serves 1.0, idle" in failed.stderr
    assert "slave3 (slave, serves 1.0" in failed.stderr
    assert [r[0] for r in marker_rows(master)] == sorted(k.removesuffix(".sql") for k in OLD)
    assert all(slave.service_running("apache2") for slave in cluster.slaves)
    for slave in cluster.slaves:
        assert preinst(slave).returncode == 0
        unpack(slave)
        waited = postinst(slave)
        assert waited.returncode == 1 and "master (master, serves 1.0, failed at migrate" \
            in waited.stderr
    assert postinst(master).returncode == 0
    for slave in cluster.slaves:
        assert postinst(slave).returncode == 0
    assert_upgraded(cluster)


def test_serial_master_first_told_to_migrate_while_slaves_serve(node_factory):
    cluster = build_cluster(node_factory, cluster=IMPATIENT)
    configure(cluster.master, "master", {"migrate_while_serving": "yes"})
    for node in cluster.nodes:  # one apt run after the other, none fails
        assert preinst(node).returncode == 0
        unpack(node)
        done = postinst(node)
        assert done.returncode == 0, done.stderr
    assert "told to migrate while slaves serve the old code (slave1, slave2, slave3)" in \
        cluster.master.maint_log_dir.joinpath(
            sorted(p.name for p in cluster.master.maint_log_dir.iterdir())[-1]).read_text()
    first = min(r[3] for r in marker_rows(cluster.master) if r[0] in NEW_KEYS)
    assert all(web_events(s)[1][0] > first for s in cluster.slaves)  # served old code, as told
    assert_upgraded(cluster, served_old_during_migration=True)


def test_a_slave_waits_on_an_ivle_database_whose_master_never_registered(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster={"master_timeout": 1.5})
    assert cli(cluster.master, "cluster", "forget", "master").returncode == 0
    slave = cluster.slaves[0]
    assert preinst(slave).returncode == 0
    unpack(slave)
    failed = postinst(slave)
    assert failed.returncode == 1, failed.stderr
    assert "the master's migrations are still missing" in failed.stderr
    assert not slave.service_running("apache2")

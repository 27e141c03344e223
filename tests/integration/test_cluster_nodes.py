"""The cluster table by hand (status, register, forget), node names, media versions."""

from __future__ import annotations

import threading

import pytest

from ivle_sandbox.cluster import build_cluster, configure, share_database, share_jails
from ivle_sandbox.node import install_version
from ivle_sandbox.releases import RELEASES
from support.cluster_helpers import PATIENT, cli, node_rows, run_concurrently, status
from support.upgrade_helpers import at_version_1_0, media_version, postinst, preinst, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]


def upgrade(node, old: str = "1.0", new: str = "1.1") -> None:
    assert preinst(node, old, new).returncode == 0
    if old != new:
        unpack(node, new)
    done = postinst(node, old, new)
    assert done.returncode == 0, done.stderr


def test_status_register_forget(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    done = cli(cluster.slaves[0], "cluster", "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "VERSION", "SERVING", "TARGET", "PHASE",
                                "MEDIA", "LAST", "SEEN", "HOST"]
    assert [line.split()[:7] for line in lines[1:4]] == [
        ["master", "master", "1.0", "1.0", "-", "idle", "1.0"],
        ["slave1", "slave", "1.0", "1.0", "-", "idle", "1.0"],
        ["slave2", "slave", "1.0", "1.0", "-", "idle", "1.0"],
    ]
    assert "media version: 1.0 on every slave (2)" in done.stdout

    doc = status(cluster.master)  # --expect 1.1 on a cluster still on 1.0
    assert doc["returncode"] == 1
    assert "slave1 has 1.0, not 1.1" in doc["problems"]
    # No migration marker before the first upgrade: even 1.0's are not known as applied.
    assert "migrations not applied: 20090105, 20090212-01" in doc["problems"]

    cluster.slaves[1].stop_services()
    assert cli(cluster.slaves[1], "cluster", "register").returncode == 0
    assert node_rows(cluster.master)["slave2"]["serving"] is None  # its web server is down
    assert cli(cluster.master, "cluster", "forget", "slave2").returncode == 0
    assert "slave2" not in node_rows(cluster.master)
    gone = cli(cluster.master, "cluster", "forget", "slave2")
    assert gone.returncode == 1 and "no node named 'slave2'" in gone.stderr


def test_two_nodes_with_one_name_are_refused_before_anything_stops(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    twin = cluster.slaves[1]
    configure(twin, "slave1", {})
    done = preinst(twin)
    assert done.returncode == 1
    assert "the cluster table already has a node named 'slave1' written by another " \
        "ivle-maint" in done.stderr
    assert "ivle-maint cluster forget slave1" in done.stderr
    assert twin.service_running("apache2") and len(twin.console_pids()) == 1
    assert node_rows(cluster.master)["slave1"]["phase"] == "idle"  # the other's row kept


def test_fresh_slaves_agree_on_the_media_version_without_any_database(node_factory):
    # The local rule alone (media/version.py): same version + same history -> same value.
    slaves = [at_version_1_0(node_factory(role="slave", users=2)) for _ in range(3)]
    for slave in slaves:
        configure(slave, "slave", {"coordinate": "never"})
        upgrade(slave)
    assert [media_version(s) for s in slaves] == ["1.1", "1.1", "1.1"]
    conn = slaves[0].connect()
    with conn.cursor() as cur:  # 'never': nothing written to the database
        cur.execute("SELECT to_regclass('ivle_maint_nodes'), to_regclass('ivle_maint_media')")
        assert cur.fetchone() == (None, None)
    conn.close()


def test_a_slave_added_later_takes_the_clusters_media_version(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    runs = run_concurrently({node: (0, 0, 0) for node in cluster.nodes})
    assert all(run.ok() for run in runs), "\n".join(run.text() for run in runs)
    # Both slaves reinstall 1.1 at once: one new value, chosen once.
    threads = [threading.Thread(target=upgrade, args=(s, "1.1", "1.1")) for s in cluster.slaves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [media_version(s) for s in cluster.slaves] == ["1.1.r2", "1.1.r2"]

    # Installed at 1.0 on a cluster at 1.1: refused (old code on the new
    # schema), recorded so a master would wait for it; then upgraded.
    late = node_factory(role="slave", users=4, mount=False)
    share_database(late, cluster.master)
    share_jails(late, cluster.master)
    late.mount_all()
    configure(late, "slave3", {"poll": 0.1, **PATIENT})
    install_version(late, "1.0", RELEASES["1.0"])
    hook = cli(late, "hook", "--package-version", "1.0", "postinst", "configure", "")
    assert hook.returncode == 1
    assert "slave3 at IVLE 1.0 joins the cluster while master is on 1.1" in hook.stderr
    cluster.slaves.append(late)
    plan = cli(late, "plan", "--from", "1.0", "--to", "1.1")
    assert "media version: 1.0 -> 1.1\n" in plan.stdout  # its own record knows no better
    upgrade(late)
    assert media_version(late) == "1.1.r2"  # the cluster's value, not its own
    doc = status(cluster.master)
    assert doc["problems"] == [] and doc["slave_media"] == {
        "1.1.r2": ["slave1", "slave2", "slave3"]}
    assert doc["media_chosen"] == [["1.1", "1.1"], ["1.1.r2", "1.1"]]


def test_register_refuses_a_name_another_machine_holds(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    twin = cluster.slaves[1]
    before = node_rows(cluster.master)["slave1"]
    configure(twin, "slave1", {})  # its own machine id, another node's name
    refused = cli(twin, "cluster", "register")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1
    assert "node name 'slave1' is held by another machine" in refused.stderr
    assert "ivle-maint cluster register --replace" in refused.stderr
    assert node_rows(cluster.master)["slave1"] == before

    # The fresh-install hook refuses it too.
    late = node_factory(role="slave", users=4)
    share_database(late, cluster.master)
    configure(late, "slave1", {"poll": 0.1})
    install_version(late, "1.0", RELEASES["1.0"])
    hook = cli(late, "hook", "--package-version", "1.0", "postinst", "configure", "")
    assert hook.returncode == 2 and "is held by another machine" in hook.stderr
    assert node_rows(cluster.master)["slave1"] == before

    # The same machine with its state lost is still itself.
    (cluster.slaves[0].state_dir / "node-id").unlink()
    assert cli(cluster.slaves[0], "cluster", "register").returncode == 0

    replaced = cli(twin, "cluster", "register", "--replace")
    assert replaced.returncode == 0 and "taking over node name 'slave1'" in replaced.stderr
    conn = cluster.master.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT machine FROM ivle_maint_nodes WHERE name = 'slave1'")
        assert cur.fetchone()[0] == f"sandbox-{twin.root.name}"
    conn.close()

"""The Ansible playbook against a sandbox cluster, each host a local node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from configobj import ConfigObj

from ivle_sandbox.cluster import REPO, Cluster, build_cluster, node_name
from support.cluster_helpers import PATIENT, SLAVES, assert_upgraded, node_rows, web_events
from support.upgrade_helpers import ALL_KEYS, OLD_KEYS, journal, marker_keys, set_setting

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.needs_postgres,
    pytest.mark.once,
    pytest.mark.skipif(shutil.which("ansible-playbook") is None,
                       reason="needs ansible-playbook (scripts/install-deps: ansible-core)"),
]

PLAYBOOK = REPO / "scripts" / "ansible" / "upgrade-cluster.yml"
SLAVES_PLAY = "Upgrade the slaves in batches"
NO_HOSTS = "skipping: no hosts matched"


def inventory(cluster: Cluster, path: Path) -> Path:
    """Every node a host with connection: local and its own IVLECONF/IVLE_MAINT_CONF."""
    python = sys.executable
    hosts = {}
    for node in cluster.nodes:
        sandbox = f"{python} -m ivle_sandbox.fakeapt --root {node.root}"
        hosts[node_name(node)] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ivle_environment": {**node.env, "PYTHONPATH": f"{REPO}:{REPO / 'scripts'}"},
            "ivle_upgrade_command": f"{sandbox} install 1.1",
            "ivle_configure_command": f"{sandbox} configure-pending",
        }
    master = node_name(cluster.master)
    doc = {"all": {
        "vars": {"ivle_maint": f"{python} -m ivle_maint", "ivle_apt_update": False,
                 "ivle_become": False},
        "children": {
            "ivle_master": {"hosts": {master: hosts.pop(master)}},
            "ivle_slaves": {"hosts": hosts},
        },
    }}
    path.write_text(json.dumps(doc, indent=1))
    return path


def playbook(inv: Path, tmp: Path, batch: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run the playbook; BATCH: -e ivle_slave_batch (None: the default, every slave at once)."""
    env = {**os.environ, "ANSIBLE_HOME": str(tmp / "ansible"),
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible" / "tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_CONFIG": str(tmp / "none.cfg")}
    batches = [] if batch is None else ["-e", f"ivle_slave_batch={batch}"]
    return subprocess.run(
        ["ansible-playbook", "-i", str(inv), str(PLAYBOOK), "-e", "ivle_version=1.1", *batches],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
        check=False, cwd=tmp,
    )


@pytest.fixture
def cluster(node_factory):
    return build_cluster(node_factory, cluster={"master_timeout": 60, "slaves_timeout": 60})


def slave_batches(out: str) -> int:
    """How many batches the slaves' own upgrade play ran in (Ansible heads
    each with PLAY); 0 when it matched no host (every slave with the master)."""
    plays = [p.split("PLAY [")[0] for p in out.split(f"PLAY [{SLAVES_PLAY}]")[1:]]
    return sum(NO_HOSTS not in p for p in plays)


def first_applied(node, version: str) -> float:
    """When NODE's database applied its first migration of VERSION (epoch seconds)."""
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM min(applied_at)) FROM ivle_maint_migrations "
                        "WHERE package_version = %s AND mode <> 'baseline'", (version,))
            return float(cur.fetchone()[0])
    finally:
        conn.close()


def test_playbook_upgrades_the_cluster_in_the_seed_order(cluster, tmp_path):
    done = playbook(inventory(cluster, tmp_path / "inventory.json"), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every slave's web server started after the master's migrations, none
    # before (start, stop, start): all at once, in one batch.
    assert_upgraded(cluster)
    assert slave_batches(done.stdout) == 0, done.stdout  # with the master, not after it
    # Every slave was down, its before-phase done, before the master's
    # first migration; and no slave unpacked before every one was down.
    first_migration = first_applied(cluster.master, "1.1")
    downs = [web_events(slave)[1][0].timestamp() for slave in cluster.slaves]
    for slave, down in zip(cluster.slaves, downs, strict=True):
        assert down < first_migration
        assert journal(slave)["steps"]["unmount-jails"]["finished"] < first_migration
        assert journal(slave)["steps"]["media-version"]["started"] > max(downs)
    for node in cluster.nodes:  # each slave's preinst waited; the master did not
        logs = "".join(f.read_text() for f in node.maint_log_dir.glob("upgrade-*"))
        waited = "every node did its before-phase" in logs
        assert waited == (node is not cluster.master), node_name(node)
    assert "media version: 1.1 on every slave (3)" in done.stdout


@pytest.mark.parametrize("batch", [None, 1], ids=["all-at-once", "rolling"])
def test_playbook_rerun_after_a_failed_slave_finishes_the_cluster(cluster, tmp_path, batch):
    inv = inventory(cluster, tmp_path / "inventory.json")
    broken = cluster.slaves[1]
    broken.set_fakes("apache2", fail=["start"])
    failed = playbook(inv, tmp_path, batch)
    assert failed.returncode != 0
    assert "dpkg --configure -a" in failed.stdout  # the hook's resume line, via fakeapt
    assert "PLAY [Verify the cluster]" not in failed.stdout  # the run ends at the failure
    first, _, last = cluster.slaves
    assert first.service_running("apache2") and first.installed_version() == "1.1"
    if batch is None:
        # One batch: the others came back beside the failed slave.
        assert last.service_running("apache2") and last.installed_version() == "1.1"
    else:
        # The batch after the failure never ran: prepared (down) but still on 1.0.
        assert not last.service_running("apache2") and last.installed_version() == "1.0"
        assert slave_batches(failed.stdout) == 2, failed.stdout
    assert not broken.service_running("apache2")

    broken.set_fakes("apache2", fail=[])
    again = playbook(inv, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_upgraded(cluster)  # includes: each slave's web server stopped exactly once


def test_playbook_gives_the_slaves_back_when_one_prepare_fails(node_factory, tmp_path):
    cluster = build_cluster(node_factory, cluster=PATIENT)
    broken = cluster.slaves[1]
    broken.set_fakes("apache2", fail=["stop"])
    # Its Apache ignores the graceful stop too: the stop waits [services]
    # timeout for requests in flight before the init script's stop fails.
    timeout = ConfigObj(str(broken.maint_conf))["services"]["timeout"]
    set_setting(broken, "services", "timeout", 4)
    failed = playbook(inventory(cluster, tmp_path / "inventory.json"), tmp_path)
    assert failed.returncode != 0
    out = " ".join(failed.stdout.split())
    # Every other slave's preinst saw slave2 fail and gave its site back;
    # the master's migrate stopped at once, nothing migrated.
    assert out.count("stops before its code is unpacked: slave2:") >= 2, failed.stdout
    assert "stops before migrating, nothing migrated: slave2:" in out, failed.stdout
    # The master's jail rebuild (beside its migrate) stopped at once too,
    # naming slave2, rather than waiting out slaves_timeout for jails the
    # slaves given back will never free.
    assert "rebuild the jail failed too: the upgrade to 1.1 stops before rewriting the " \
        "shared jail tree, jail tree left as it was: slave2:" in out, failed.stdout
    for slave in cluster.slaves:
        assert slave.installed_version() == "1.0"
    assert all(slave.service_running("apache2") for slave in cluster.slaves)
    rows = node_rows(cluster.master)
    assert {rows[name]["serving"] for name in SLAVES} == {"1.0"}
    # The master's before-phase recorded 1.0's migrations at most (baseline):
    # nothing of 1.1 was applied.
    assert marker_keys(cluster.master) in ([], OLD_KEYS)

    broken.set_fakes("apache2", fail=[])  # fixed: the run again finishes it all
    set_setting(broken, "services", "timeout", timeout)
    again = playbook(inventory(cluster, tmp_path / "inventory.json"), tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(node.installed_version() == "1.1" for node in cluster.nodes)
    assert all(slave.service_running("apache2") for slave in cluster.slaves)
    assert marker_keys(cluster.master) == ALL_KEYS  # each once, the master's resumed migrate


def test_a_master_refused_by_its_preflight_ends_the_slaves_wait_at_once(node_factory, tmp_path):
    """The master's preinst refused before its first step (a login its
    remake-users would pass as an option: the preflight's proof): its row
    says it gave the upgrade up, so each slave's barrier (unpack_together)
    names it and gives its site back, instead of waiting out
    slaves_timeout for a before-phase that will not come."""
    cluster = build_cluster(node_factory, cluster=PATIENT)
    conn = cluster.master.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO login (login, unixid, state, nick, fullname) "
                        "VALUES ('--help', 900001, 'enabled', 'x', 'x')")
    finally:
        conn.close()
    failed = playbook(inventory(cluster, tmp_path / "inventory.json"), tmp_path)
    assert failed.returncode != 0
    out = " ".join(failed.stdout.split())
    assert "holds the login '--help'" in out, failed.stdout
    assert "master: it gave its upgrade up" in out, failed.stdout
    assert "did its before-phase of 1.1 within" not in out, failed.stdout  # no timeout
    assert all(node.installed_version() == "1.0" for node in cluster.nodes)
    assert all(slave.service_running("apache2") for slave in cluster.slaves)


RECORDER = """import sys
with open(sys.argv[1], "a") as f:
    f.write(" ".join(sys.argv[2:]) + "\\n")
"""


def recording_inventory(tmp: Path) -> tuple[Path, Path]:
    """A master and two slaves whose ivle-maint and apt only record their
    arguments (host, then the command line) in calls.txt."""
    recorder, calls = tmp / "record.py", tmp / "calls.txt"
    recorder.write_text(RECORDER)
    host = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    hosts = {name: {**host, "ivle_maint": f"{sys.executable} {recorder} {calls} {name}",
                    "ivle_upgrade_command": f"{sys.executable} {recorder} {calls} {name} apt",
                    "ivle_configure_command": "true"}
             for name in ("master", *SLAVES[:2])}
    doc = {"all": {"vars": {"ivle_apt_update": False, "ivle_become": False}, "children": {
        "ivle_master": {"hosts": {"master": hosts.pop("master")}},
        "ivle_slaves": {"hosts": hosts}}}}
    inv = tmp / "inventory.json"
    inv.write_text(json.dumps(doc, indent=1))
    return inv, calls


def run_recorded(tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    inv, calls = recording_inventory(tmp)
    env = {**os.environ, "ANSIBLE_HOME": str(tmp / "ansible"),
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible" / "tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_CONFIG": str(tmp / "none.cfg")}
    done = subprocess.run(["ansible-playbook", "-i", str(inv), str(PLAYBOOK), *extra], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=600, check=False, cwd=tmp)
    return done, sorted(calls.read_text().splitlines()) if calls.exists() else []


@pytest.mark.parametrize("accept", [False, True], ids=["refusing", "accepting-data-loss"])
def test_playbook_rolls_back_every_node_at_once(tmp_path, accept):
    extra = ["-e", "ivle_accept_data_loss=true"] if accept else []
    done, calls = run_recorded(tmp_path, "-e", "ivle_version=1.0", "-e", "ivle_rollback=true",
                               *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    rollback = "rollback --accept-data-loss" if accept else "rollback"
    names = ("master", *SLAVES[:2])
    assert calls == sorted([*(f"{n} cluster register" for n in names),
                            *(f"{n} {rollback}" for n in names),
                            "master cluster status --expect 1.0"]), calls
    # Every node's rollback in one play, as the upgrade's apt runs: no prepare.
    assert "PLAY [Take every slave's web server down]" in done.stdout
    assert done.stdout.count(NO_HOSTS) >= 3, done.stdout


def test_playbook_without_rollback_runs_apt_not_rollback(tmp_path):
    done, calls = run_recorded(tmp_path, "-e", "ivle_version=1.1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any("rollback" in c for c in calls), calls
    assert {"master apt", "slave1 apt", "slave2 apt"} <= set(calls), calls
    # Every before-phase in its own preinst: no prepare play unless batched.
    assert not any("cluster prepare" in c for c in calls), calls
    (tmp_path / "batched").mkdir()
    batched, calls = run_recorded(tmp_path / "batched", "-e", "ivle_version=1.1",
                                  "-e", "ivle_slave_batch=1")
    assert batched.returncode == 0, batched.stdout + batched.stderr
    assert {"slave1 cluster prepare --to 1.1", "slave2 cluster prepare --to 1.1"} \
        <= set(calls), calls

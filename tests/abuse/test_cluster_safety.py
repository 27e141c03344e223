"""Cluster safety: who is alive, who may be treated as down, who may be forgotten.

Whether an ivle-maint run is alive is decided once (ivle_maint/liveness.py)
from its boot id, PID namespace, pid and start time: the migration lock's
holder (db/lock.py) and a node's row in the cluster table (cluster status,
cluster forget) are judged by it.  Real processes in real PID namespaces,
one real PostgreSQL server; the pure decisions have their generated cases
in tests/unit/cluster/test_trust.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from configobj import ConfigObj

from ivle_maint import liveness
from ivle_maint.db import lock
from ivle_sandbox.cluster import build_cluster, configure, share_database
from ivle_sandbox.node import install_version
from ivle_sandbox.releases import RELEASES
from support.cluster_helpers import PATIENT, cli, node_rows, wait_rows
from support.upgrade_helpers import OLD_KEYS, marker_keys, postinst, preinst, set_setting, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

REPO = Path(__file__).resolve().parents[2]

# Takes the migration lock as ivle-maint names itself, then sits in a long
# statement: killed there, its server session keeps the lock.
HOLDER = """
import json, sys
import psycopg2
from ivle_maint.db import connect, lock
conn = psycopg2.connect(**json.loads(sys.argv[1]), application_name=connect.application_name())
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("SELECT pg_advisory_lock(%s)", [lock.LOCK_ID])
    print("locked", flush=True)
    cur.execute("SELECT pg_sleep(120)")
"""


def start_holder(dsn: dict[str, Any], *prefix: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*prefix, sys.executable, "-c", HOLDER, json.dumps(dsn)], env=env,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def wait_holder_sleeping(conn: Any) -> int:
    """The server pid of the holder's session once its long statement runs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)' "
                        "AND state = 'active'")
            row = cur.fetchone()
        conn.rollback()
        if row:
            return int(row[0])
        time.sleep(0.05)
    raise AssertionError("the holder never began its statement")


def judged_when(conn: Any, verdict: liveness.Verdict, timeout: float = 30) -> lock.Holder:
    """The holder once judged VERDICT (a killed process takes a moment to go)."""
    deadline = time.monotonic() + timeout
    while True:
        found = lock.judge_holder(conn)
        assert found is not None
        if found.judgement.verdict is verdict or time.monotonic() > deadline:
            assert found.judgement.verdict is verdict, found.judgement.text
            return found
        time.sleep(0.05)


@pytest.fixture
def waiter(postgres: Any) -> Any:
    conn = postgres.connect("postgres")
    yield conn
    with conn.cursor() as cur:  # end a killed holder's session: its lock with it
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "query = 'SELECT pg_sleep(120)'")
    conn.commit()
    conn.close()


def test_a_live_lock_holder_in_another_pid_namespace_is_not_declared_dead(postgres, waiter):
    """Same hostname, same machine, pid 1 of its own PID namespace: alive."""
    holder = start_holder(postgres.dsn("postgres"), "unshare", "--pid", "--fork", "--kill-child",
                          "--mount-proc")
    try:
        server_pid = wait_holder_sleeping(waiter)
        assert lock.stale_holder(waiter) is None  # no pg_terminate_backend advice
        found = lock.judge_holder(waiter)
        assert found is not None and found.server_pid == server_pid
        assert found.runner is not None and found.runner.pid == 1  # its own namespace's pid
        assert found.judgement.verdict is liveness.Verdict.ALIVE, found.judgement.text

        # Killed inside its statement: its session still holds the lock, for nobody.
        holder.send_signal(signal.SIGKILL)  # unshare, then its child (--kill-child)
        holder.wait(timeout=30)
        found = judged_when(waiter, liveness.Verdict.DEAD)
        assert "exited" in found.judgement.text
        assert lock.stale_holder(waiter) == (server_pid, 1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_dead_lock_holder_in_this_pid_namespace_is_still_found_dead(postgres, waiter):
    holder = start_holder(postgres.dsn("postgres"))
    try:
        server_pid = wait_holder_sleeping(waiter)
        assert lock.judge_holder(waiter).judgement.verdict is liveness.Verdict.ALIVE
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert lock.stale_holder(waiter) == (server_pid, holder.pid)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_lock_holder_on_another_machine_is_unknowable_and_says_how_to_check(
        postgres, waiter):
    conn = postgres.connect("postgres", application_name="ivle-maint 0123456789ab.effffffc."
                            "4242.1000 on elsewhere")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", [lock.LOCK_ID])
        conn.commit()
        found = lock.judge_holder(waiter)
        assert found is not None and found.judgement.verdict is liveness.Verdict.UNKNOWABLE
        assert "another machine" in found.judgement.text
        assert "check on elsewhere whether pid 4242" in found.judgement.text
        assert "ps -p 4242" in found.judgement.text
        assert lock.stale_holder(waiter) is None
    finally:
        conn.close()


# -- the cluster's rows -----------------------------------------------------------

IMPATIENT = {"master_timeout": 60, "slaves_timeout": 2}


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("ivle-maint: error")]


def test_a_slave_row_from_install_time_saying_down_does_not_let_the_master_migrate(
        node_factory):
    """Installed before its web server and probe URL existed: its row says down,
    idle, with the default probe URL; then its web server started (as at boot)."""
    cluster = build_cluster(node_factory, slaves=1, cluster=IMPATIENT)
    slave = cluster.slaves[0]
    conf = ConfigObj(str(slave.maint_conf))
    probe_url = conf["cluster"].pop("probe_url")
    conf.write()
    assert slave.service("apache2", "stop").returncode == 0
    assert cli(slave, "cluster", "register").returncode == 0  # as the install recorded it
    assert slave.service("apache2", "start").returncode == 0  # systemd, at boot
    set_setting(slave, "cluster", "probe_url", probe_url)  # the administrator, later
    row = node_rows(cluster.master)["slave1"]
    assert (row["serving"], row["phase"]) == (None, "idle")

    master = cluster.master
    assert preinst(master).returncode == 0
    unpack(master)
    failed = postinst(master)
    assert failed.returncode == 1, failed.stderr
    assert marker_keys(master) == OLD_KEYS  # nothing migrated under the old code
    [error] = error_lines(failed.stderr)
    assert "nothing migrated" in error and "slave1 (slave, down, idle" in error
    assert "nothing keeps its web server down" in error

    # Any ivle-maint run on the slave refreshes its row: then the master sees it serve.
    assert cli(slave, "cluster", "status").returncode == 0
    assert node_rows(master)["slave1"]["serving"] == "1.0"


def test_forget_refuses_a_live_slave_with_mounted_jails(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    assert slave.service_running("apache2")
    refused = cli(cluster.master, "cluster", "forget", "slave1")
    assert refused.returncode == 1, refused.stderr
    [error] = error_lines(refused.stderr)
    assert "slave1 looks alive: its web server answers" in error
    assert "ivle-maint cluster forget --force slave1" in error
    assert "slave1" in node_rows(cluster.master)

    # Down, but its last row counts a mounted jail and a console.
    conn = cluster.master.connect()
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE ivle_maint_nodes SET serving = NULL, target = '1.1', "
                    "phase = 'failed', mounts = 4, consoles = 1, "
                    "last_seen = now() - interval '1 day' WHERE name = 'slave1'")
    conn.close()
    assert slave.service("apache2", "stop").returncode == 0
    refused = cli(cluster.master, "cluster", "forget", "slave1")
    assert refused.returncode == 1
    assert "its last row counts 4 jail mount(s) and 1 console(s)" in refused.stderr

    forced = cli(cluster.master, "cluster", "forget", "--force", "slave1")
    assert forced.returncode == 0, forced.stderr
    assert "forgetting slave1 anyway (--force)" in forced.stderr
    assert "the master stops waiting for slave1" in forced.stderr
    assert "slave1" not in node_rows(cluster.master)


def test_ages_are_human_and_forget_of_a_busy_node_needs_force(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    conn = cluster.master.connect()
    with conn, conn.cursor() as cur:  # a clock ahead of the server's: a row "from the future"
        cur.execute("UPDATE ivle_maint_nodes SET last_seen = now() + interval '3 seconds' "
                    "WHERE name = 'master'")
        cur.execute("UPDATE ivle_maint_nodes SET last_seen = now() - interval '200 seconds' "
                    "WHERE name = 'slave1'")
    conn.close()
    shown = cli(cluster.master, "cluster", "status")
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()[1:3]}
    assert "just now" in lines["master"] and "-" not in lines["master"].split("idle")[1]
    assert "3 min ago" in lines["slave1"]

    assert preinst(slave).returncode == 0  # slave1 is now in the middle of an upgrade
    refused = cli(cluster.master, "cluster", "forget", "slave1")
    assert refused.returncode == 1
    assert "slave1 looks alive: it was seen just now in the middle of an upgrade (unpack)" \
        in refused.stderr
    assert "ivle-maint cluster forget --force slave1" in refused.stderr
    assert "slave1" in node_rows(cluster.master)
    forced = cli(cluster.master, "cluster", "forget", "--force", "slave1")
    assert forced.returncode == 0 and "forgetting slave1 anyway" in forced.stderr
    assert "slave1" not in node_rows(cluster.master)


def test_a_waiting_slave_whose_ivle_maint_was_killed_shows_it_exited(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    assert preinst(slave).returncode == 0
    unpack(slave)
    proc = start_postinst(slave)
    try:
        wait_rows(cluster.master, ["slave1"], "waiting")
        shown = cli(cluster.master, "cluster", "status")
        assert "exited while" not in shown.stdout  # it runs
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    shown = cli(cluster.master, "cluster", "status")
    assert shown.returncode == 0, shown.stderr
    assert "exited while waiting (start-web)" in shown.stdout
    assert "slave1: its ivle-maint exited" in shown.stdout
    # Judged the same wherever the question is asked: forget no longer sees it running.
    assert "its ivle-maint runs" not in cli(cluster.master, "cluster", "forget",
                                            "slave1").stderr


def start_postinst(node):
    from support.upgrade_helpers import start_cli

    return start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")


def test_cluster_status_gives_up_at_once_on_a_stopped_database(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    pg = cluster.master.pg
    stop = pg._run("pg_ctl", "-D", str(pg.pgdata), "-m", "fast", "-w", "stop")
    assert stop.returncode == 0, stop.stderr
    try:
        # The safety net only: [database] wait_timeout (120 s) is not waited.
        done = subprocess.run([sys.executable, "-m", "ivle_maint", "cluster", "status"],
                              env={**os.environ, **cluster.slaves[0].env,
                                   "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=100,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        start = pg._run("pg_ctl", "-D", str(pg.pgdata), "-l", str(pg.logfile), "-w", "start")
        assert start.returncode == 0, start.stderr
        pg.pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
    assert done.returncode == 1, done.stderr
    [error] = error_lines(done.stderr)
    assert "the database is unreachable" in error
    assert "Traceback" not in done.stderr


def test_a_slave_installed_during_the_masters_upgrade_is_refused_and_waited_for(
        node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=IMPATIENT)
    master = cluster.master
    assert preinst(cluster.slaves[0]).returncode == 0
    assert preinst(master).returncode == 0
    unpack(master)
    late = node_factory(role="slave", users=4)  # its web server runs the old code
    share_database(late, master)
    configure(late, "late", {"poll": 0.1})
    install_version(late, "1.0", RELEASES["1.0"])
    hook = cli(late, "hook", "--package-version", "1.0", "postinst", "configure", "")
    assert hook.returncode == 1, hook.stderr
    [error] = error_lines(hook.stderr)
    assert "late at IVLE 1.0 joins the cluster while master is upgrading to 1.1" in error
    assert node_rows(master)["late"]["serving"] == "1.0"  # recorded: the master waits
    failed = postinst(master)
    assert failed.returncode == 1 and "late (slave, serves 1.0" in failed.stderr
    assert marker_keys(master) == OLD_KEYS


def test_a_second_master_is_refused_and_shown(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    twin = node_factory(role="master", users=2)
    share_database(twin, cluster.master)
    configure(twin, "master2", {})
    refused = cli(twin, "cluster", "register")
    assert refused.returncode == 2, refused.stderr
    [error] = error_lines(refused.stderr)
    assert "master (host" in error and "is already this cluster's master node" in error
    assert "master2" not in node_rows(cluster.master)
    # Its upgrade is refused before anything stops.
    done = preinst(twin)
    assert done.returncode != 0 and "already this cluster's master node" in done.stderr
    assert twin.service_running("ivle-usrmgt-server")

    # One recorded anyway (an older ivle-maint): cluster status shows it.
    conn = cluster.master.connect()
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO ivle_maint_nodes (name, role, host, instance, version, "
                    "serving, phase) VALUES ('old-master', 'master', 'elsewhere', 'x', '1.0', "
                    "'1.0', 'idle')")
    conn.close()
    shown = cli(cluster.slaves[0], "cluster", "status")
    assert "MORE THAN ONE MASTER: master on" in shown.stdout
    assert "old-master on elsewhere" in shown.stdout
    expect = cli(cluster.slaves[0], "cluster", "status", "--json", "--expect", "1.0")
    assert "more than one master: master, old-master (one master per database)" in \
        json.loads(expect.stdout)["problems"]


def test_a_row_written_before_a_reboot_is_refreshed_at_boot(node_factory):
    """What ivle-maint-refresh.service runs once the web server started at
    boot: the row recorded while it was down says it serves, so the master
    waits for it instead of migrating under it."""
    cluster = build_cluster(node_factory, slaves=1, cluster=IMPATIENT)
    slave = cluster.slaves[0]
    assert slave.service("apache2", "stop").returncode == 0
    assert cli(slave, "cluster", "register").returncode == 0  # the row before the reboot
    assert node_rows(cluster.master)["slave1"]["serving"] is None
    assert slave.service("apache2", "start").returncode == 0  # systemd, at boot
    done = cli(slave, "cluster", "refresh")
    assert done.returncode == 0, done.stderr
    assert "refreshed slave1 (slave): version 1.0, service 1.0" in done.stderr
    assert node_rows(cluster.master)["slave1"]["serving"] == "1.0"

    # Mid-upgrade the upgrade's own row stays: the refresh leaves it alone.
    assert preinst(slave).returncode == 0
    phase = node_rows(cluster.master)["slave1"]["phase"]
    again = cli(slave, "cluster", "refresh")
    assert again.returncode == 0 and "an upgrade is unfinished here" in again.stderr
    assert node_rows(cluster.master)["slave1"]["phase"] == phase


def test_the_boot_refresh_unit_runs_a_command_that_exists_and_is_installed():
    """debian/ivle-maint.ivle-maint-refresh.service: its ExecStart is a real
    ivle-maint command, and debian/rules installs the unit."""
    import shlex

    from ivle_maint.cli import build_parser

    unit = (REPO / "debian" / "ivle-maint.ivle-maint-refresh.service").read_text()
    [line] = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == "/usr/sbin/ivle-maint"
    args = build_parser().parse_args(argv[1:])
    assert args.func.__name__ == "cmd_refresh"
    assert "dh_installsystemd --name=ivle-maint-refresh" in \
        (REPO / "debian" / "rules").read_text()


def test_a_slave_mid_upgrade_is_not_forgotten_when_the_servers_clock_jumped(node_factory):
    """The database server's clock jumped an hour forward (or the slave waits
    between dpkg's scripts that long): its row looks an hour old, yet it is
    in the middle of an upgrade; forgetting it needs --force."""
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    assert preinst(slave).returncode == 0
    conn = cluster.master.connect()
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE ivle_maint_nodes SET last_seen = now() - interval '1 hour' "
                    "WHERE name = 'slave1'")
    conn.close()
    refused = cli(cluster.master, "cluster", "forget", "slave1")
    assert refused.returncode == 1, refused.stderr
    assert "it was seen 60 min ago in the middle of an upgrade (unpack)" in refused.stderr
    assert "slave1" in node_rows(cluster.master)

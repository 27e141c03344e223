"""Cluster defects found by trying to break a sandbox cluster (issue 13).

Each test drives real nodes (own roots, real init-script stand-ins), one
real PostgreSQL server and ivle-maint as separate processes, as dpkg
runs it; each failed on the code before its fix.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import shutil
import signal
import threading
import time

import pytest

from ivle_sandbox import procs
from ivle_sandbox.cluster import build_cluster, configure, share_database
from ivle_sandbox.node import Node, install_version
from ivle_sandbox.postgres import ThrowawayPostgres
from ivle_sandbox.releases import RELEASES
from support.cluster_helpers import (
    PATIENT,
    SLAVES,
    assert_upgraded,
    cli,
    join,
    node_rows,
    run_concurrently,
    start_sequences,
    status,
    wait_rows,
    web_events,
)
from support.upgrade_helpers import (
    OLD_KEYS,
    marker_keys,
    media_version,
    postinst,
    preinst,
    set_setting,
    start_cli,
    unpack,
    wait_for_step,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


def upgrade(node: Node, old: str = "1.0", new: str = "1.1") -> str:
    assert preinst(node, old, new).returncode == 0
    if old != new:
        unpack(node, new)
    done = postinst(node, old, new)
    assert done.returncode == 0, done.stderr
    return done.stderr


def pg_ctl(pg: ThrowawayPostgres, *args: str) -> None:
    done = pg._run("pg_ctl", "-D", str(pg.pgdata), "-l", str(pg.logfile), "-w", "-t", "30",
                   *args)
    assert done.returncode == 0, done.stderr
    if "stop" not in args:
        pg.pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0])


def set_media(node: Node, value: str) -> None:
    text = node.ivle_conf.read_text()
    line = re.compile(r"^(\s*version\s*=\s*).*$", re.M)
    assert len(line.findall(text)) == 1
    node.ivle_conf.write_text(line.sub(rf"\g<1>{value}", text))


# -- 3. a PostgreSQL restart must not kill the waits --------------------------


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


# -- 4. media versions: the cluster's value already in ivle.conf is agreement --


def test_a_slave_already_holding_the_new_media_value_agrees(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    early, pushed = cluster.slaves
    assert preinst(pushed).returncode == 0  # down, so the master need not wait for it
    runs = run_concurrently({cluster.master: (0, 0, 0), early: (0, 0, 0)})
    assert all(run.ok() for run in runs), "\n".join(run.text() for run in runs)
    assert media_version(early) == "1.1"
    unpack(pushed)
    set_media(pushed, "1.1")  # configuration management got there first
    done = postinst(pushed)
    assert done.returncode == 0, done.stderr
    assert media_version(pushed) == "1.1"
    doc = status(cluster.master)
    assert doc["problems"] == [] and doc["slave_media"] == {"1.1": ["slave1", "slave2"]}


def test_one_slave_reinstalling_alone_is_warned_of_differing_media(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    runs = run_concurrently({node: (0, 0, 0) for node in cluster.nodes})
    assert all(run.ok() for run in runs), "\n".join(run.text() for run in runs)
    text = upgrade(cluster.slaves[0], "1.1", "1.1")
    assert media_version(cluster.slaves[0]) == "1.1.r2"
    assert "changes the media version 1.1 -> 1.1.r2 here only: slave2 keeps 1.1" \
        in text.replace("keep 1.1", "keeps 1.1"), text


# -- weak points ---------------------------------------------------------------


def test_sigkill_inside_stop_web_then_dpkg_abort_brings_the_web_server_back(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    slave.set_fakes("apache2", delay=1.5)  # the init script takes its time to stop
    proc = start_cli(slave, "hook", "preinst", "upgrade", "1.0", "1.1")
    wait_for_step(slave, "stop-web", proc)
    stopping = wait_for_init_script(slave, "apache2", "stop")
    proc.send_signal(signal.SIGKILL)  # while the init script is at work
    proc.communicate(timeout=30)
    procs.wait_gone([stopping], 10)  # the orphaned init script may still stop it
    slave.set_fakes("apache2", delay=0)
    # dpkg: the old package's postinst abort-upgrade NEW.
    done = cli(slave, "hook", "postinst", "abort-upgrade", "1.1")
    assert done.returncode == 0, done.stderr
    assert slave.service_running("apache2")
    row = node_rows(cluster.master)["slave1"]
    assert (row["serving"], row["phase"]) == ("1.0", "idle")


def wait_for_init_script(node: Node, name: str, action: str, timeout: float = 30) -> int:
    """The pid of NODE's init script NAME running ACTION, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in procs.all_pids():
            argv = procs.cmdline(pid)
            if (str(node.root) in argv and name in argv and action in argv
                    and any(a.endswith("initd-service") for a in argv)):
                return pid
        time.sleep(0.01)
    raise AssertionError(f"{name} {action} never ran")


# -- 1. "serving" is checked, not assumed ----------------------------------------

IMPATIENT = {"master_timeout": 60, "slaves_timeout": 2}


def master_upgrade_fails_waiting_for(cluster, name: str) -> str:
    master = cluster.master
    assert preinst(master).returncode == 0
    unpack(master)
    failed = postinst(master)
    assert failed.returncode == 1, failed.stderr
    assert "nothing migrated" in failed.stderr and name in failed.stderr.split("nothing")[1]
    assert marker_keys(master) == OLD_KEYS  # the schema is still 1.0's
    return failed.stderr


def test_services_start_web_after_the_before_phase_is_recorded_and_waited_for(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=IMPATIENT)
    for slave in cluster.slaves:
        assert preinst(slave).returncode == 0
    assert node_rows(cluster.master)["slave1"]["serving"] is None
    # Bringing the site back by hand after a failed playbook run: not by
    # `services start web` (the schema hold refuses it) but by abandoning.
    done = cli(cluster.slaves[0], "services", "start", "web")
    assert done.returncode == 1 and "schema hold: apache2 must not start" in done.stderr
    assert node_rows(cluster.master)["slave1"]["serving"] is None
    done = cli(cluster.slaves[0], "rerun", "--abandon")
    assert done.returncode == 0, done.stderr
    assert node_rows(cluster.master)["slave1"]["serving"] == "1.0"
    text = master_upgrade_fails_waiting_for(cluster, "slave1")
    assert "slave1 (slave, serves 1.0" in text
    assert re.search(r"ivle-maint cluster forget slave1 \(last seen (just now|\d+ s ago)\)",
                     text), text
    done = cli(cluster.slaves[0], "services", "stop", "web")
    assert done.returncode == 0 and node_rows(cluster.master)["slave1"]["serving"] is None


def test_a_web_server_started_behind_ivle_maints_back_is_found_by_the_probe(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=IMPATIENT)
    for slave in cluster.slaves:
        assert preinst(slave).returncode == 0
    hand = cluster.slaves[1]
    assert hand.service("apache2", "start").returncode == 0  # /etc/init.d/apache2 start
    assert node_rows(cluster.master)["slave2"]["serving"] is None  # the row cannot know
    text = master_upgrade_fails_waiting_for(cluster, "slave2")
    assert f"but its web server answers at http://127.0.0.1:{hand.web_port}/ (HTTP 200)" \
        in text
    # A maintenance page (503) is not serving: stand in for one with a 503 server.
    assert hand.service("apache2", "stop").returncode == 0
    with maintenance_page(hand.web_port):
        done = postinst(cluster.master)  # the rerun: no slave serves
        assert done.returncode == 0, done.stderr
    for slave in cluster.slaves:
        unpack(slave)
        assert postinst(slave).returncode == 0
    assert status(cluster.master)["problems"] == []


def test_start_web_restarts_a_web_server_started_by_hand_before_the_new_code(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    assert preinst(slave).returncode == 0
    upgrade(cluster.master)
    assert slave.service("apache2", "start").returncode == 0  # by hand, old code loaded
    unpack(slave)
    done = postinst(slave)
    assert done.returncode == 0, done.stderr
    # The after-phase re-checks stop-web before it trusts it: stopped again.
    assert "apache2 was started again since the before-phase stopped it: doing it again" \
        in done.stderr
    events = [e for _, e in web_events(slave)]
    assert events == ["start", "stop", "start", "stop", "start"], events
    assert status(cluster.master)["problems"] == []
    # --expect asks the web server too: a row saying "serves" is not enough.
    assert slave.service("apache2", "stop").returncode == 0
    doc = status(cluster.master)
    assert doc["returncode"] == 1 and doc["problems"] == [
        f"slave1's row says it serves 1.1, but no answer at http://127.0.0.1:{slave.web_port}/ "
        "(Connection refused)"]


# -- 2. register: a name another machine holds -----------------------------------


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


# -- coordinate = auto: a site whose master never registered ---------------------


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


@contextlib.contextmanager
def maintenance_page(port: int):
    """A web server on PORT that answers 503, as a maintenance page does."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    http.server.HTTPServer.allow_reuse_address = True
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


# -- the playbook: a failed prepare on one slave gives the others back ----------


@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="needs ansible-playbook")
def test_playbook_gives_the_slaves_back_when_one_prepare_fails(node_factory, tmp_path):
    from test_cluster_playbook import inventory, playbook

    cluster = build_cluster(node_factory, cluster=PATIENT)
    broken = cluster.slaves[1]
    broken.set_fakes("apache2", fail=["stop"])
    failed = playbook(inventory(cluster, tmp_path / "inventory.json"), tmp_path)
    assert failed.returncode != 0
    out = " ".join(failed.stdout.split())
    assert "the before-phase failed on slave2" in out, failed.stdout
    assert "the other slaves (slave1, slave3) were given back" in out
    for node in cluster.nodes:
        assert node.installed_version() == "1.0"
    assert all(slave.service_running("apache2") for slave in cluster.slaves)
    rows = node_rows(cluster.master)
    assert {rows[name]["serving"] for name in SLAVES} == {"1.0"}
    assert marker_keys(cluster.master) == []  # the master never began


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

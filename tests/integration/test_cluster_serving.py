"""Whether a node serves is checked, not assumed: the before-phase records
and waits for it, the master's wait asks each slave's web server (a 503
maintenance page is not serving), start-web stops again a web server
started by hand, and dpkg's abort after a SIGKILL inside stop-web brings
the web server back.

Each test drives real nodes (own roots, real init-script stand-ins), one
real PostgreSQL server and ivle-maint as separate processes, as dpkg
runs it; each failed on the code before its fix (issue 13's defects).
"""

from __future__ import annotations

import contextlib
import http.server
import re
import signal
import threading
import time

import pytest

from ivle_sandbox import procs
from ivle_sandbox.cluster import build_cluster
from ivle_sandbox.node import Node
from support.cluster_helpers import PATIENT, cli, node_rows, status, upgrade, web_events
from support.upgrade_helpers import (
    OLD_KEYS,
    marker_keys,
    postinst,
    preinst,
    start_cli,
    unpack,
    wait_for_step,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]


def test_sigkill_inside_stop_web_then_dpkg_abort_brings_the_web_server_back(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    # The init script takes its time to stop, and Apache's main process
    # outlives its children's graceful exit (by up to drain_poll): killed
    # in between, the web server is still on its way out when dpkg aborts.
    slave.set_fakes("apache2", delay=1.5, drain_poll=5)
    proc = start_cli(slave, "hook", "preinst", "upgrade", "1.0", "1.1")
    wait_for_step(slave, "stop-web", proc)
    stopping = wait_for_init_script(slave, "apache2", "stop")
    proc.send_signal(signal.SIGKILL)  # while the init script is at work
    proc.communicate(timeout=30)
    procs.wait_gone([stopping], 10)  # the orphaned init script may still stop it
    slave.set_fakes("apache2", delay=0, drain_poll=5)
    # dpkg: the old package's postinst abort-upgrade NEW.
    done = cli(slave, "hook", "postinst", "abort-upgrade", "1.1")
    assert done.returncode == 0, done.stderr
    time.sleep(6)  # past the dying main process's last look: it must not have been it
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

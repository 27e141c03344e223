"""A rollback of a sandbox cluster through dpkg's hook calls on every node
(one master, two slaves, one real database): 1.0 -> 1.1 on all nodes,
then the kept 1.0 installed over 1.1 on all nodes at once.

Code only (an additive release): the schema serves both versions, so the
master's database step waits for no slave; the rows written since stay.
Full (a destructive release, accepted): the master swaps the database
only once no slave serves 1.1, and no slave serves 1.0 before the swap.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from ivle_maint.config import load_settings
from ivle_maint.output import RecordingReporter
from ivle_maint.rollback.checks import run_checks
from ivle_maint.rollback.point import all_points
from ivle_sandbox.cluster import build_cluster, env_of
from ivle_sandbox.node import Node
from ivle_sandbox.releases import DESTRUCTIVE, RELEASES
from support.cluster_helpers import PATIENT, Run, node_rows, web_events
from support.upgrade_helpers import journal, logins, media_version, unpack, write_row

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]

ACCEPT = {"IVLE_MAINT_ACCEPT_DATA_LOSS": "1"}


def hook(node: Node, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivle_maint", "hook", *args],
                          env={**env_of(node), **(env or {})}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, check=False)


def sequence(run: Run, old: str, new: str, delay: float, *,
             migrations: dict[str, str] | None = None, env: dict[str, str] | None = None
             ) -> None:
    """dpkg installing NEW over OLD: preinst, unpack, postinst."""
    time.sleep(delay)
    done = hook(run.node, "preinst", "upgrade", old, new, env=env)
    run.calls.append(("preinst", done.returncode, done.stderr))
    if done.returncode:
        return
    install(run.node, new, migrations)
    done = hook(run.node, "--package-version", new, "postinst", "configure", old, env=env)
    run.calls.append(("postinst", done.returncode, done.stderr))


def install(node: Node, version: str, migrations: dict[str, str] | None) -> None:
    """dpkg's unpack: VERSION's files, and the migrations it does not ship gone."""
    shipped = RELEASES[version] if migrations is None else migrations
    unpack(node, version, shipped)
    for path in node.migrations.glob("*.sql"):
        if path.name not in shipped:
            path.unlink()


def at_once(delays: dict[Node, float], old: str, new: str, **kw: Any) -> list[Run]:
    runs = [Run(node) for node in delays]
    threads = [threading.Thread(target=sequence, args=(r, old, new, delays[r.node]),
                                kwargs=kw) for r in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert all(r.ok() for r in runs), "\n".join(r.text() for r in runs)
    return runs


def log_time(node: Node, text: str) -> datetime:
    """When NODE's ivle-maint logs first said TEXT (its log files)."""
    for path in sorted(node.maint_log_dir.glob("*.log")):
        for line in path.read_text().splitlines():
            if text in line:
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
    raise AssertionError(f"{node.root}: no log line says {text!r}")


def media_chosen(node: Node) -> set[tuple[str, str]]:
    conn = node.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT value, version FROM ivle_maint_media")
        found = {(row[0], row[1]) for row in cur.fetchall()}
    conn.close()
    return found


def assert_rolled_back(cluster: Any) -> None:
    for node in cluster.nodes:
        assert node.installed_version() == "1.0"
    assert cluster.master.service_running("ivle-usrmgt-server")
    assert all(s.service_running("apache2") for s in cluster.slaves)
    assert cluster.master.template_version() == "1.0"
    assert len({media_version(s) for s in cluster.slaves}) == 1  # one media version
    assert media_version(cluster.slaves[0]) != "1.1"
    rows = node_rows(cluster.master)
    assert {(r["version"], r["serving"], r["phase"]) for r in rows.values()} == {
        ("1.0", "1.0", "idle")}, rows
    # Every value chosen stays chosen, the rollback's too (a swap keeps them).
    assert {("1.1", "1.1"), (media_version(cluster.slaves[0]), "1.0")} <= \
        media_chosen(cluster.master)


def rolling_back(cluster: Any, env: dict[str, str] | None = None) -> list[Run]:
    """The rollback on every node, the master a moment ahead (the wait matters)."""
    delays = {cluster.master: 0.0, **{s: 1.0 for s in cluster.slaves}}
    return at_once(delays, "1.1", "1.0", env=env)


def master_checks(cluster: Any, *, full: bool) -> list[Any]:
    """ivle-maint rollback's table of checks, on the master once all is back."""
    settings = load_settings(str(cluster.master.maint_conf))
    (point,) = [p for p in all_points(settings) if p.rolled_back]
    return run_checks(settings, RecordingReporter(), point, None, full=full)


def test_an_additive_release_rolls_back_code_only_across_the_cluster(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    at_once({node: 0.0 for node in cluster.nodes}, "1.0", "1.1")
    write_row(cluster.master, "written_after")
    runs = rolling_back(cluster)
    master = runs[0].text()
    assert "rollback: code only" in master, master
    assert "waiting for the slaves to stop serving" not in master, master
    steps = journal(cluster.master, "1.1", "1.0")["steps"]
    migrate = steps["migrate"]["summary"]
    assert "code-only rollback" in migrate, migrate
    assert "written_after" in logins(cluster.master)  # nothing users wrote is lost
    assert_rolled_back(cluster)
    # The shared jail tree still waits for the master's put-back template.
    done = datetime.fromtimestamp(steps["restart-usrmgt"]["finished"], UTC)
    assert all(web_events(s)[-1][0] > done for s in cluster.slaves)


def test_a_destructive_release_rolls_back_full_only_once_no_slave_serves_it(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    at_once({node: 0.0 for node in cluster.nodes}, "1.0", "1.1",
            migrations={**RELEASES["1.1"], **DESTRUCTIVE})
    write_row(cluster.master, "written_after")
    runs = rolling_back(cluster, env=ACCEPT)
    master = runs[0].text()
    assert "rollback: full" in master, master
    # Waited for, or (the slaves a moment quicker, on a loaded machine) found:
    # the swap comes only once no slave serves 1.1 (its web events, below).
    assert "no slave serves code other than 1.0" in master, master
    swapped = log_time(cluster.master, "database swap")
    for slave in cluster.slaves:
        events = web_events(slave)
        stop, start = events[-2], events[-1]
        assert stop[1] == "stop" and stop[0] < swapped, (slave.root, events, swapped)
        assert start[1] == "start" and start[0] > swapped, (slave.root, events, swapped)
    assert "written_after" not in logins(cluster.master)  # the dump's rows, as accepted
    assert_rolled_back(cluster)
    results = master_checks(cluster, full=True)
    assert [r for r in results if not r.ok] == [], results
    assert {r.name for r in results} >= {"migrations", "schema fingerprint", "usrmgt", "slaves"}
    assert next(r for r in results if r.name == "slaves").detail == "2 slave(s) serve 1.0"


def test_cluster_status_shows_a_node_rolling_back(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    at_once({node: 0.0 for node in cluster.nodes}, "1.0", "1.1")
    slave = cluster.slaves[0]
    done = hook(slave, "preinst", "upgrade", "1.1", "1.0")
    assert done.returncode == 0, done.stderr
    shown = subprocess.run([sys.executable, "-m", "ivle_maint", "cluster", "status"],
                           env=env_of(cluster.master), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60, check=False).stdout
    line = next(ln for ln in shown.splitlines() if ln.startswith("slave1 "))
    assert "rollback 1.1 -> 1.0: unpack" in line, shown
    at_once({cluster.master: 0.0}, "1.1", "1.0")
    install(slave, "1.0", None)
    done = hook(slave, "--package-version", "1.0", "postinst", "configure", "1.1")
    assert done.returncode == 0, done.stderr
    assert node_rows(cluster.master)["slave1"]["phase"] == "idle"


def test_a_slave_rolled_back_alone_waits_for_the_master_then_stays_down(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster={"master_timeout": 1.5,
                                                            "slaves_timeout": 60})
    at_once({node: 0.0 for node in cluster.nodes}, "1.0", "1.1")
    slave = cluster.slaves[0]
    (run,) = [Run(slave)]
    sequence(run, "1.1", "1.0", 0.0)
    assert [rc for _, rc, _ in run.calls] == [0, 1], run.text()
    # Not refused as "ahead": the master on 1.1 may yet roll back; waited for.
    assert "the master has not finished its rollback to 1.0 after 1.5s" in run.text()
    assert not slave.service_running("apache2")  # no 1.0 code before the master is done
    at_once({cluster.master: 0.0}, "1.1", "1.0")
    done = hook(slave, "--package-version", "1.0", "postinst", "configure", "1.1")
    assert done.returncode == 0, done.stderr
    assert slave.service_running("apache2")

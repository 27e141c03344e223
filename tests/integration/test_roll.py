"""A release that rolls: one slave at a time out of the pool, the site up.

A sandbox cluster (one master, slaves on its database and jail tree, real
PostgreSQL, stand-in web servers that serve IVLE's front page with its
media version), upgraded first to 1.1 by IVLE's procedure, then to 1.2,
a release that adds one additive migration and changes no code: it rolls.
dpkg's lists of each release (its md5sums, as release_needs reads them)
are each node's own admin directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from configobj import ConfigObj

from ivle_sandbox.cluster import Cluster, build_cluster, configure
from ivle_sandbox.node import Node
from ivle_sandbox.releases import OLD, RELEASES
from support.cluster_helpers import journal_steps, marker_rows, web_events
from support.preinst_manifest import manifest
from support.upgrade_helpers import REPO, cli, set_setting, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]

ADDITIVE = {"20110301-01.sql": "CREATE TABLE roll_audit (id serial PRIMARY KEY, note text);\n"}
DESTRUCTIVE = {"20110301-01.sql": "ALTER TABLE login DROP COLUMN nick;\n"}
STEPS_OF_A_ROLL = ("leave-pool", "join-pool")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def files(code: str, migrations: dict[str, str]) -> dict[str, str]:
    """dpkg's md5sums of an IVLE package: its code (CODE names a build of
    it), static media and migrations."""
    listed = {"usr/lib/ivle/ivle/__init__.py": md5(f"code {code}"),
              "usr/lib/ivle/ivle/webapp/core/media/ivle.css": md5(f"media {code}")}
    for name, text in migrations.items():
        listed[f"usr/share/ivle/userdb/migrations/{name}"] = md5(text)
    return listed


class Dpkg:
    """Each node's dpkg admin directory, as dpkg leaves it for a preinst."""

    def __init__(self, node: Node, top: Path) -> None:
        self.node, self.top = node, top
        (top / "info").mkdir(parents=True)
        (top / "tmp.ci").mkdir()
        node.env["DPKG_ADMINDIR"] = str(top)
        node.env["DPKG_MAINTSCRIPT_PACKAGE"] = "ivle"

    def _write(self, path: Path, listed: dict[str, str]) -> None:
        path.write_text("".join(f"{d}  {p}\n" for p, d in sorted(listed.items())))

    def installed(self, listed: dict[str, str]) -> None:
        self._write(self.top / "info" / "ivle.md5sums", listed)

    def preinst(self, old: str, new: str, listed: dict[str, str],
                migrations: dict[str, str]) -> Any:
        (self.top / "tmp.ci" / "control").write_text(
            f"Package: ivle\nVersion: {new}\nArchitecture: all\n")
        self._write(self.top / "tmp.ci" / "md5sums", listed)
        env = {**os.environ, **self.node.env, "PYTHONPATH": str(REPO),
               "DPKG_MAINTSCRIPT_NAME": "preinst"}
        return subprocess.run(  # dh_ivle_maint's preinst: NEW's migrations on stdin
            [sys.executable, "-m", "ivle_maint", "hook", "--new-migrations", "-", "preinst",
             "upgrade", old, new], env=env, input=manifest(migrations, new),
            capture_output=True, text=True, timeout=300, check=False)

    def postinst(self, old: str, new: str) -> Any:
        return cli(self.node, "hook", "--package-version", new, "postinst", "configure", old,
                   extra_env={"DPKG_MAINTSCRIPT_NAME": "postinst"})

    def upgrade(self, old: str, new: str, listed: dict[str, str],
                migrations: dict[str, str]) -> str:
        """preinst, unpack, postinst, as one apt-get run on the node."""
        before = self.preinst(old, new, listed, migrations)
        assert before.returncode == 0, before.stdout + before.stderr
        unpack(self.node, new, migrations)
        self.installed(listed)
        done = self.postinst(old, new)
        assert done.returncode == 0, done.stdout + done.stderr
        return before.stdout + before.stderr + done.stdout + done.stderr


V11 = RELEASES["1.1"]


@pytest.fixture
def at_1_1(node_factory, tmp_path: Path) -> tuple[Cluster, dict[Node, Dpkg]]:
    """Master and two slaves upgraded to 1.1 by IVLE's procedure (the
    database has no marker yet, and 1.1 changes the code: it does not
    roll), each slave behind the pool."""
    cluster = build_cluster(node_factory, slaves=2, cluster={"master_timeout": 60})
    dpkgs = {}
    for i, node in enumerate(cluster.nodes):
        dpkgs[node] = Dpkg(node, tmp_path / f"dpkg{i}")
        dpkgs[node].installed(files("1.0", OLD))
    for slave in cluster.slaves:
        configure(slave, slave_name(slave), {})
        set_pool(slave)
    threads = [threading.Thread(target=dpkgs[n].upgrade, args=("1.0", "1.1", files("1.1", V11),
                                                                V11)) for n in cluster.nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for node in cluster.nodes:
        assert node.installed_version() == "1.1"
        steps = journal_steps(node)
        if node in cluster.slaves:  # IVLE's procedure: no marker yet, and the code changes
            assert "does not roll" in steps["leave-pool"]["metrics"]["skipped"]
            assert "did not leave the pool" in steps["join-pool"]["metrics"]["skipped"]
    return cluster, dpkgs


def slave_name(node: Node) -> str:
    from ivle_sandbox.cluster import node_name

    return node_name(node)


def set_pool(slave: Node) -> None:
    """The slave in the pool: its answer served (a2enconf), ready."""
    set_setting(slave, "pool", "ready_url", f"http://127.0.0.1:{slave.web_port}/")
    set_setting(slave, "pool", "ready_timeout", 20)
    cli(slave, "pool", "drain", check=True)  # writes conf-available/ivle-maint-pool.conf
    apache = Path(ConfigObj(str(slave.maint_conf))["web"]["apache_dir"])
    (apache / "conf-enabled" / "ivle-maint-pool.conf").symlink_to(
        "../conf-available/ivle-maint-pool.conf")
    cli(slave, "pool", "ready", check=True)


def down_intervals(slave: Node, since: datetime) -> list[tuple[datetime, datetime]]:
    """When the slave's web server was down (a stop to the next start) since SINCE."""
    events = [(t, e) for t, e in web_events(slave) if t >= since]
    out, stopped = [], None
    for when, event in events:
        if event == "stop":
            stopped = when
        elif event == "start" and stopped is not None:
            out.append((stopped, when))
            stopped = None
    return out


def roll(cluster: Cluster, dpkgs: dict[Node, Dpkg], migrations: dict[str, str]
         ) -> dict[Node, str]:
    """1.1 -> 1.2 with apt-get on every node at once; each node's output."""
    v12 = {**V11, **migrations}
    said: dict[Node, str] = {}

    def one(node: Node) -> None:
        said[node] = dpkgs[node].upgrade("1.1", "1.2", files("1.1", v12), v12)

    threads = [threading.Thread(target=one, args=(n,)) for n in cluster.nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return said


def test_an_additive_release_rolls_one_slave_at_a_time(at_1_1) -> None:
    cluster, dpkgs = at_1_1
    since = max(t for s in cluster.slaves for t, _ in web_events(s))
    said = roll(cluster, dpkgs, ADDITIVE)
    assert all(node in said for node in cluster.nodes), said
    assert "the release rolls: migrating while slaves serve the old code" in \
        said[cluster.master], said[cluster.master]
    assert [r[0] for r in marker_rows(cluster.master)][-1] == "20110301-01"
    intervals = {s: down_intervals(s, since) for s in cluster.slaves}
    assert all(len(v) == 1 for v in intervals.values()), intervals
    (a_start, a_end), (b_start, b_end) = (v[0] for v in intervals.values())
    assert a_end <= b_start or b_end <= a_start, intervals  # never both down
    for slave in cluster.slaves:
        steps = journal_steps(slave, new="1.2")
        for name in STEPS_OF_A_ROLL:
            assert "skipped" not in steps[name]["metrics"], steps[name]
        assert steps["leave-pool"]["metrics"]["rolls"].startswith(
            "every pending migration is additive (1), no jail rebuild"), steps["leave-pool"]
        assert steps["join-pool"]["metrics"]["out_of_pool"] > 0
        assert "out of the balancer's pool" in said[slave]
        assert slave.service_running("apache2")
        answer = slave.state_dir / "pool" / "answer"
        assert answer.read_text() == "ready 1.2\n"
    shown = cli(cluster.master, "cluster", "status")
    assert "roll to 1.2: rolls" not in shown.stdout  # every row idle: no target left


def test_a_destructive_release_falls_back_to_ivles_procedure_saying_why(at_1_1) -> None:
    cluster, dpkgs = at_1_1
    said = roll(cluster, dpkgs, DESTRUCTIVE)
    for slave in cluster.slaves:
        steps = journal_steps(slave, new="1.2")
        assert "rolling: does not roll: not additive: destructive" in said[slave]
        why = steps["leave-pool"]["metrics"].get("skipped", steps["leave-pool"])
        assert "not additive: destructive" in str(why), (why, said[slave], said[cluster.master])
        assert "does not roll" in said[slave] or "skipped" in said[slave]


def test_a_slave_that_fails_readiness_stays_out_and_the_roll_stops_there(at_1_1) -> None:
    cluster, dpkgs = at_1_1
    failing, other = cluster.slaves
    since = max(t for s in cluster.slaves for t, _ in web_events(s))
    set_setting(failing, "pool", "ready_url", f"http://127.0.0.1:{failing.web_port}/elsewhere")
    set_setting(failing, "pool", "ready_timeout", 1)
    for slave in cluster.slaves:
        set_setting(slave, "cluster", "master_timeout", 8)
    v12 = {**V11, **ADDITIVE}
    done: dict[Node, Any] = {}

    def one(node: Node) -> None:
        first = dpkgs[node].preinst("1.1", "1.2", files("1.1", v12), v12)
        if first.returncode != 0:
            done[node] = first
            return
        unpack(node, "1.2", v12)
        dpkgs[node].installed(files("1.1", v12))
        done[node] = dpkgs[node].postinst("1.1", "1.2")

    threads = [threading.Thread(target=one, args=(n,)) for n in cluster.nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert done[cluster.master].returncode == 0, done[cluster.master].stderr
    assert done[failing].returncode == 1
    assert "does not carry media version" in done[failing].stderr, done[failing].stderr
    assert not (failing.state_dir / "pool" / "answer").exists()  # out of the pool
    shown = cli(cluster.master, "cluster", "status")
    failing_name = slave_name(failing)
    assert "roll to 1.2: rolls (every pending migration is additive (1)" in shown.stdout
    assert f"out of the pool: {failing_name}" in shown.stdout, shown.stdout
    assert f"{failing_name}: " in shown.stdout and "does not carry media version" in \
        shown.stdout, shown.stdout  # its row's note says why
    assert failing.service_running("apache2") and other.service_running("apache2")
    if done[other].returncode == 0:  # it went first: it serves the new version
        assert (other.state_dir / "pool" / "answer").read_text() == "ready 1.2\n"
    else:  # it waited for the slot the failed slave keeps: nothing stopped
        assert "no roll slot" in done[other].stderr and "slave" in done[other].stderr
        assert down_intervals(other, since) == []
    intervals = [i for s in cluster.slaves for i in down_intervals(s, since)]
    assert len(intervals) <= 2
    if len(intervals) == 2:
        (a_start, a_end), (b_start, b_end) = intervals
        assert a_end <= b_start or b_end <= a_start, intervals


def test_always_refuses_a_release_that_does_not_roll_before_anything_stops(at_1_1) -> None:
    cluster, dpkgs = at_1_1
    v12 = {**V11, **DESTRUCTIVE}
    slave = cluster.slaves[0]
    slave.env["IVLE_MAINT_ROLLING"] = "sometimes"
    bad = dpkgs[slave].preinst("1.1", "1.2", files("1.1", v12), v12)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "IVLE_MAINT_ROLLING must be auto, always or never, not sometimes" in bad.stderr
    slave.env["IVLE_MAINT_ROLLING"] = "always"
    events = web_events(slave)
    refused = dpkgs[slave].preinst("1.1", "1.2", files("1.1", v12), v12)
    assert refused.returncode == 1
    assert "IVLE_MAINT_ROLLING = always, but this release does not roll: not additive: " \
        "destructive" in refused.stderr, refused.stderr
    assert slave.service_running("apache2") and web_events(slave) == events  # nothing stopped
    slave.env.pop("IVLE_MAINT_ROLLING")
    plan = cli(cluster.master, "plan", "--from", "1.1", "--to", "1.2", "--rolling", "always")
    assert "rolling: does not roll:" in plan.stdout and "(refused: --rolling = always)" in \
        plan.stdout, plan.stdout


def test_a_node_that_may_not_roll_refuses_the_clusters_roll_before_anything_stops(
        at_1_1) -> None:
    cluster, dpkgs = at_1_1
    first, second = cluster.slaves
    v12 = {**V11, **ADDITIVE}
    began = dpkgs[first].preinst("1.1", "1.2", files("1.1", v12), v12)
    assert began.returncode == 0 and "out of the pool" in began.stdout + began.stderr
    events = web_events(second)
    second.env["IVLE_MAINT_ROLLING"] = "never"
    refused = dpkgs[second].preinst("1.1", "1.2", files("1.1", v12), v12)
    assert refused.returncode == 1
    (line,) = [x for x in refused.stderr.splitlines() if "error" in x]
    assert "the cluster rolls 1.1 -> 1.2" in line and "IVLE_MAINT_ROLLING = never" in line
    assert "nothing was stopped" in line and "ivle-maint cluster forget-roll 1.2" in line
    assert web_events(second) == events and second.service_running("apache2")


def test_a_slave_whose_pool_answer_is_not_served_does_not_roll(at_1_1) -> None:
    cluster, dpkgs = at_1_1
    slave = cluster.slaves[0]
    apache = Path(ConfigObj(str(slave.maint_conf))["web"]["apache_dir"])
    (apache / "conf-enabled" / "ivle-maint-pool.conf").unlink()  # a2disconf
    v12 = {**V11, **ADDITIVE}
    done = dpkgs[slave].preinst("1.1", "1.2", files("1.1", v12), v12)
    assert done.returncode == 0, done.stderr
    assert "rolling: does not roll: this web node's pool answer (/.ivle-maint/pool) is not " \
        "served" in done.stderr, done.stderr

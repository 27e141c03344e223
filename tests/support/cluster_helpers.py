"""Driving and checking upgrades of a sandbox cluster (ivle_sandbox.cluster).

A node's upgrade is dpkg's sequence of separate processes (preinst,
unpack, postinst); an order is one thread per node running that sequence
with pauses, so the nodes overlap as unattended apt runs would.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ivle_sandbox.cluster import Cluster, env_of, node_name
from ivle_sandbox.node import Node
from support.upgrade_helpers import ALL_KEYS, NEW_KEYS, media_version, postinst, preinst, unpack

SLAVES = ["slave1", "slave2", "slave3"]
# Cluster settings: waits long enough for the slowest node of a loaded machine.
PATIENT = {"master_timeout": 60, "slaves_timeout": 60}


def cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivle_maint", *args], env=env_of(node),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                          check=False)


def status(node: Node) -> dict[str, Any]:
    done = cli(node, "cluster", "status", "--json", "--expect", "1.1")
    doc: dict[str, Any] = json.loads(done.stdout)
    doc["returncode"] = done.returncode
    return doc


@dataclass
class Run:
    """What one node's dpkg sequence did: each hook's exit status and output."""

    node: Node
    calls: list[tuple[str, int, str]] = field(default_factory=list)

    def ok(self) -> bool:
        return all(rc == 0 for _, rc, _ in self.calls)

    def text(self) -> str:
        return "\n".join(f"--- {name} -> {rc}\n{out}" for name, rc, out in self.calls)


def dpkg_sequence(run: Run, pauses: tuple[float, float, float]) -> None:
    """pause, preinst, pause, unpack, pause, postinst (skipped if the preinst failed)."""
    node = run.node
    time.sleep(pauses[0])
    done = preinst(node)
    run.calls.append(("preinst", done.returncode, done.stderr))
    if done.returncode:
        return
    time.sleep(pauses[1])
    unpack(node)
    time.sleep(pauses[2])
    done = postinst(node)
    run.calls.append(("postinst", done.returncode, done.stderr))


def run_concurrently(schedule: dict[Node, tuple[float, float, float]]) -> list[Run]:
    runs = [Run(node) for node in schedule]
    threads = [threading.Thread(target=dpkg_sequence, args=(run, schedule[run.node]))
               for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return runs


def random_schedule(cluster: Cluster, seed: int, spread: float = 3.0
                    ) -> dict[Node, tuple[float, float, float]]:
    """A start delay and two pauses per node, from SEED: an apt-get-like order."""
    rng = random.Random(seed)
    return {node: (rng.uniform(0, spread), rng.uniform(0, spread / 2), rng.uniform(0, 0.5))
            for node in cluster.nodes}


def marker_rows(node: Node) -> list[tuple[str, str, str, datetime]]:
    """(key, mode, host, applied_at) of every marker row."""
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT key, mode, host, applied_at FROM ivle_maint_migrations "
                        "ORDER BY key")
            return [tuple(row) for row in cur.fetchall()]  # type: ignore[misc]
    finally:
        conn.close()


def web_events(node: Node) -> list[tuple[datetime, str]]:
    """(time, start|stop) of the node's web server, oldest first; failed tries left out."""
    return [(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), event)
            for stamp, _, event in node.service_events("apache2") if "FAILED" not in event]


def journal_steps(node: Node, new: str = "1.1") -> dict[str, dict[str, Any]]:
    """The steps of NODE's journal of the upgrade to NEW (started, finished: epoch)."""
    path = node.state_dir / "journal"
    found = [p for p in sorted(path.glob("*.json")) if json.loads(p.read_text())["new"] == new]
    assert found, f"{node.root}: no journal of an upgrade to {new}"
    steps: dict[str, dict[str, Any]] = json.loads(found[-1].read_text())["steps"]
    return steps


def finished_at(node: Node, step: str, new: str = "1.1") -> datetime:
    stamp = journal_steps(node, new)[step]["finished"]
    assert stamp is not None, f"{node.root}: {step} not finished"
    return datetime.fromtimestamp(stamp, UTC)


def master_done_at(master: Node) -> datetime:
    """When the master finished the last step that changes what slaves serve or
    mount: its user jails rebuilt, its usrmgt restarted (the journal, and the
    usrmgt start in its services.log)."""
    usrmgt = [datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
              for stamp, _, event in master.service_events("ivle-usrmgt-server")
              if event == "start"]
    return max(finished_at(master, "remake-users"), finished_at(master, "restart-usrmgt"),
               usrmgt[-1])


def assert_slaves_after_master(cluster: Cluster) -> None:
    """No slave's web server started on new code before the master finished."""
    done = master_done_at(cluster.master)
    for slave in cluster.slaves:
        started = web_events(slave)[-1]
        assert started[1] == "start" and started[0] > done, (
            f"{slave.root}: web started {started[0]} before the master's jail rebuild, user "
            f"jails and usrmgt restart ended at {done}")


def assert_upgraded(cluster: Cluster, *, served_old_during_migration: bool = False) -> None:
    """All nodes on 1.1 and up, one media version, the schema migrated once, and
    no slave's web server started on new code before the master's migrations,
    jail rebuild, user jails and usrmgt restart."""
    for node in cluster.nodes:
        assert node.installed_version() == "1.1"
    assert cluster.master.service_running("ivle-usrmgt-server")
    assert all(slave.service_running("apache2") for slave in cluster.slaves)

    rows = marker_rows(cluster.master)
    assert [r[0] for r in rows] == ALL_KEYS  # each key once (and the key is the primary key)
    applied = [r for r in rows if r[0] in NEW_KEYS]
    assert all(r[1] != "baseline" for r in applied)  # run, not merely recorded
    assert {r[2] for r in applied} == {"master"}  # the master ran them, nobody else
    first, last = min(r[3] for r in applied), max(r[3] for r in applied)

    for slave in cluster.slaves:
        events = web_events(slave)
        assert [e for _, e in events] == ["start", "stop", "start"], events
        (stopped, _), (started, _) = events[1], events[2]
        assert started > last, f"{slave.root}: web started {started} before migration {last}"
        if not served_old_during_migration:
            assert stopped < first, f"{slave.root}: still served old code at {first}"

    assert_slaves_after_master(cluster)
    assert cluster.master.template_version() == "1.1"  # the shared tree, rebuilt once
    assert all(slave.template_version() == "1.1" for slave in cluster.slaves)

    doc = status(cluster.master)
    assert doc["problems"] == [] and doc["returncode"] == 0, doc
    assert sorted(row["name"] for row in doc["nodes"]) == sorted(map(node_name, cluster.nodes))
    assert {(row["version"], row["serving"], row["phase"]) for row in doc["nodes"]} == {
        ("1.1", "1.1", "idle")}
    values = {media_version(slave) for slave in cluster.slaves}
    assert len(values) == 1 and doc["slave_media"] == {values.pop(): sorted(
        node_name(s) for s in cluster.slaves)}


def node_rows(node: Node) -> dict[str, dict[str, Any]]:
    """ivle_maint_nodes as the database holds it now, by name."""
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name, version, serving, phase, step, note, media, mounts, "
                        "consoles FROM ivle_maint_nodes")
            keys = ("version", "serving", "phase", "step", "note", "media", "mounts",
                    "consoles")
            return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in cur.fetchall()}
    finally:
        conn.close()


def wait_rows(node: Node, names: list[str], phase: str, timeout: float = 60) -> dict[str, Any]:
    """Until every node in NAMES has PHASE in the table; the rows then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = node_rows(node)
        if all(rows.get(name, {}).get("phase") == phase for name in names):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{names} never all {phase}: {node_rows(node)}")


def start_sequences(nodes: list[Node], pauses: tuple[float, float, float] = (0, 0, 0)
                    ) -> tuple[list[Run], list[threading.Thread]]:
    runs = [Run(node) for node in nodes]
    threads = [threading.Thread(target=dpkg_sequence, args=(run, pauses)) for run in runs]
    for thread in threads:
        thread.start()
    return runs, threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=600)


def upgrade(node: Node, old: str = "1.0", new: str = "1.1") -> str:
    assert preinst(node, old, new).returncode == 0
    if old != new:
        unpack(node, new)
    done = postinst(node, old, new)
    assert done.returncode == 0, done.stderr
    return done.stderr

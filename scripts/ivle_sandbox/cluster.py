"""A sandbox cluster on one machine: one master and N slaves, one database.

    cluster = build_cluster(make_node, slaves=3)    # make_node: build_node(**kw) -> Node
    cluster.master, cluster.slaves, cluster.nodes

Each node is an ordinary sandbox node (its own root, ivle.conf,
ivle-maint.conf, state, services and jail mounts).  The master is built as
usual; each slave is built with a throwaway database of its own, which is
then dropped, and its ivle.conf [database] name is pointed at the
master's: every node talks to one real PostgreSQL database, as IVLE's
nodes do.

The jail tree is the master's, as on a real site where IVLE's data
directory is exported over NFS: the master's jails/ (template and every
user's jail) is bind-mounted over each slave's own, so the slaves mount
their users' jails from it and see every rebuild the master makes.  The
jail mounts directory stays each slave's own (mounts are per machine).

Each node gets its own [node] name and the [cluster] settings given; then
the nodes are "installed" at 1.0 (ivle-maint's fresh-install hook), which
records them in the cluster table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configobj import ConfigObj

from ivle_sandbox import mountns, schema
from ivle_sandbox.node import Node, install_version
from ivle_sandbox.releases import RELEASES

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    master: Node
    slaves: list[Node]

    @property
    def nodes(self) -> list[Node]:
        return [self.master, *self.slaves]


def node_name(node: Node) -> str:
    return str(ConfigObj(str(node.maint_conf))["node"]["name"])


def configure(node: Node, name: str, cluster: Mapping[str, Any]) -> None:
    """Set [node] name and [cluster] settings in the node's ivle-maint.conf."""
    conf = ConfigObj(str(node.maint_conf))
    conf["node"]["name"] = name
    # One machine for every sandbox node: each gets its own machine id, and
    # the slaves say where their web server (the stand-in) answers.
    conf["node"].setdefault("machine_id", f"sandbox-{node.root.name}")
    section = conf.setdefault("cluster", {})
    section.setdefault("probe_url", f"http://127.0.0.1:{node.web_port}/")
    section.update({key: str(value) for key, value in cluster.items()})
    conf.write()


def share_database(slave: Node, master: Node) -> None:
    """Point the slave's ivle.conf at the master's database; drop its own."""
    text = slave.ivle_conf.read_text()
    line = re.compile(rf"^name = {re.escape(slave.dbname)}$", re.M)
    if len(line.findall(text)) != 1:
        raise RuntimeError(f"{slave.ivle_conf}: no single [database] name line")
    slave.ivle_conf.write_text(line.sub(f"name = {master.dbname}", text))
    schema.drop_database(slave.pg, slave.dbname)
    slave.dbname = master.dbname


def share_jails(slave: Node, master: Node) -> None:
    """The master's jails/ over the slave's (the NFS export), before any jail
    of the slave is mounted; the slave's users become the master's."""
    mountns.require_private(slave.root)
    mountns.bind(master.jails_src, slave.jails_src)
    slave.users = list(master.users)


def env_of(node: Node) -> dict[str, str]:
    """The environment ivle-maint needs on NODE (also for fakeapt)."""
    path = os.pathsep.join([str(REPO), str(REPO / "scripts")])
    return {**os.environ, **node.env, "PYTHONPATH": path}


def fresh_install(node: Node, version: str = "1.0") -> None:
    """IVLE VERSION installed by its package: the postinst's fresh-install call."""
    install_version(node, version, RELEASES[version])
    subprocess.run(
        [sys.executable, "-m", "ivle_maint", "hook", "--package-version", version, "postinst",
         "configure", ""],
        env=env_of(node), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
        timeout=120,
    )


def add_slave(make_node: Callable[..., Node], master: Node, name: str, *, users: int = 4,
              consoles: int = 1, cluster: Mapping[str, Any] | None = None) -> Node:
    """A slave on the master's database and jail tree, installed at 1.0, its
    users' jails mounted from that tree and CONSOLES consoles running."""
    slave = make_node(role="slave", users=users, mount=False)
    share_database(slave, master)
    share_jails(slave, master)
    slave.mount_all()
    if consoles:
        slave.start_consoles(consoles)
    configure(slave, name, {"poll": 0.1, **(cluster or {})})
    fresh_install(slave)
    return slave


def build_cluster(make_node: Callable[..., Node], *, slaves: int = 3, users: int = 4,
                  consoles: int = 1, cluster: Mapping[str, Any] | None = None) -> Cluster:
    """A master and SLAVES slaves (slave1, ...) on one database, installed at 1.0."""
    master = make_node(role="master", users=users, mount=False)
    configure(master, "master", {"poll": 0.1, **(cluster or {})})
    fresh_install(master)
    built = [add_slave(make_node, master, f"slave{i + 1}", users=users, consoles=consoles,
                       cluster=cluster) for i in range(slaves)]
    return Cluster(master, built)

"""A sandbox cluster upgraded the way apt-get upgrades it, for the roll's tests.

One master and two slaves on one database (ivle_sandbox.cluster), each
node's dpkg admin directory its own, holding dpkg's md5sums of each
release (what release_needs reads): at_1_1() upgrades them to 1.1 by
IVLE's procedure (no marker yet, and 1.1 changes the code), roll() to 1.2
with every node's apt-get at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from configobj import ConfigObj

from ivle_sandbox.cluster import Cluster, build_cluster, configure, node_name
from ivle_sandbox.node import Node
from ivle_sandbox.releases import OLD, RELEASES
from support.cluster_helpers import journal_steps, web_events
from support.preinst_manifest import manifest
from support.upgrade_helpers import REPO, cli, set_setting, unpack

ADDITIVE = {"20110301-01.sql": "CREATE TABLE roll_audit (id serial PRIMARY KEY, note text);\n"}
DESTRUCTIVE = {"20110301-01.sql": "ALTER TABLE login DROP COLUMN nick;\n"}
STEPS_OF_A_ROLL = ("leave-pool", "join-pool")
V11 = RELEASES["1.1"]


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


def slave_name(node: Node) -> str:
    return node_name(node)


POOL_CONF = "ivle-maint-pool.conf"


def enable_pool_answer(slave: Node) -> None:
    """The slave's pool answer served by its Apache: the conf `pool drain`
    writes, enabled as a2enconf does (a link in conf-enabled)."""
    cli(slave, "pool", "drain", check=True)  # writes conf-available/ivle-maint-pool.conf
    apache = Path(ConfigObj(str(slave.maint_conf))["web"]["apache_dir"])
    assert (apache / "conf-available" / POOL_CONF).exists(), "pool drain wrote no conf"
    link = apache / "conf-enabled" / POOL_CONF
    if not link.is_symlink():
        link.symlink_to(f"../conf-available/{POOL_CONF}")


def set_pool(slave: Node) -> None:
    """The slave in the pool: its readiness page, its answer served, ready."""
    set_setting(slave, "pool", "ready_url", f"http://127.0.0.1:{slave.web_port}/")
    set_setting(slave, "pool", "ready_timeout", 20)
    enable_pool_answer(slave)
    cli(slave, "pool", "ready", check=True)


def at_1_1(make_node: Callable[..., Node], dpkg_dir: Path) -> tuple[Cluster, dict[Node, Dpkg]]:
    """Master and two slaves upgraded to 1.1 by IVLE's procedure (the
    database has no marker yet, and 1.1 changes the code: it does not
    roll), each slave behind the pool."""
    cluster = build_cluster(make_node, slaves=2, cluster={"master_timeout": 60})
    dpkgs = {}
    for i, node in enumerate(cluster.nodes):
        dpkgs[node] = Dpkg(node, dpkg_dir / f"dpkg{i}")
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

"""Media versions across a cluster: the cluster's value already in a slave's
ivle.conf is agreement, and a slave reinstalling alone is warned that its
media version now differs.

Each test drives real nodes (own roots, real init-script stand-ins), one
real PostgreSQL server and ivle-maint as separate processes, as dpkg
runs it; each failed on the code before its fix (issue 13's defects).
"""

from __future__ import annotations

import re

import pytest

from ivle_sandbox.cluster import build_cluster
from ivle_sandbox.node import Node
from support.cluster_helpers import PATIENT, run_concurrently, status, upgrade
from support.upgrade_helpers import media_version, postinst, preinst, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]


def set_media(node: Node, value: str) -> None:
    text = node.ivle_conf.read_text()
    line = re.compile(r"^(\s*version\s*=\s*).*$", re.M)
    assert len(line.findall(text)) == 1
    node.ivle_conf.write_text(line.sub(rf"\g<1>{value}", text))


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

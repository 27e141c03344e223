"""A roll behind a real HAProxy: no client request fails.

The roll of tests/integration/test_roll.py (one master, two slaves, 1.1 ->
1.2 with one additive migration, every node's apt-get at once), the two
slaves' stand-in Apaches behind Debian's HAProxy, which checks each at
/.ivle-maint/pool with `http-check disable-on-404` (support/roll_haproxy).
A client asks HAProxy for IVLE's front page 20 times a second for the
whole roll, and a watch reads HAProxy's `show servers state` every 20 ms:
every answer must be a slave's page, HAProxy must always have a slave
taking new sessions, and each slave must have waited for HAProxy's word
on its way out (NOLB or DRAIN) and back (UP).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ivle_sandbox.cluster import Cluster
from ivle_sandbox.node import Node
from support import roll_helpers
from support.balancer import HAPROXY, UP
from support.cluster_helpers import journal_steps
from support.roll_haproxy import ServerWatch, behind_haproxy
from support.roll_helpers import ADDITIVE, Dpkg, roll, slave_name
from support.traffic import Client

pytestmark = [
    pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once,
    pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (scripts/install-deps)"),
]

RATE = 20  # requests a second


def front_page(body: bytes) -> bool:
    """A slave's IVLE front page (the stand-in's: its media link, then its name)."""
    return b"/+media/+1." in body and body.endswith(b"apache2\n")


@pytest.fixture
def at_1_1(node_factory, tmp_path: Path) -> tuple[Cluster, dict[Node, Dpkg]]:
    return roll_helpers.at_1_1(node_factory, tmp_path)


def test_a_roll_behind_haproxy_fails_no_request(at_1_1, tmp_path: Path) -> None:
    cluster, dpkgs = at_1_1
    with behind_haproxy(cluster, tmp_path / "haproxy", "1.1") as site:
        with ServerWatch(site) as watch, Client(site.port, rate=RATE, good=front_page) as client:
            said = roll(cluster, dpkgs, ADDITIVE)
        answers = client.stop()
    assert all(node in said for node in cluster.nodes), said
    failed = [a for a in answers if not a.ok]
    assert answers and not failed, (len(answers), failed[:10])
    span = answers[-1].sent - answers[0].sent
    assert len(answers) >= 10 * span, (len(answers), span)  # the rate was kept
    assert watch.looks and not watch.failed_looks, watch.failed_looks[:5]
    assert not watch.none_up(), watch.none_up()[:5]
    for slave in cluster.slaves:
        name = slave_name(slave)
        assert watch.seen(name) - {UP}, (name, "never out of HAProxy's pool")
        steps = journal_steps(slave, new="1.2")
        left, joined = steps["leave-pool"], steps["join-pool"]
        assert "skipped" not in left["metrics"] and "skipped" not in joined["metrics"]
        assert f"HAProxy reports ivle/{name} NOLB after" in left["summary"] or \
            f"HAProxy reports ivle/{name} DRAIN after" in left["summary"], left
        assert f"HAProxy reports ivle/{name} UP after" in joined["summary"], joined
        # Out of the pool from the drain, not from leave-pool's start: the
        # wait for the roll slot (the second slave waits for the first) was
        # spent serving.  The wait is shown to 0.1 s.
        shown = re.search(r"waited (\d+\.\d)s", left["summary"])
        assert shown, left
        waited = float(shown.group(1))
        steps_took = joined["mono_finished"] - left["mono_started"]
        assert joined["metrics"]["out_of_pool"] <= steps_took - waited + 0.05, (left, joined)
        assert (slave.state_dir / "pool" / "answer").read_text() == "ready 1.2\n"

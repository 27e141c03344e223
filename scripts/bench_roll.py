#!/usr/bin/python3
"""Benchmark: what a client sees through HAProxy while a release rolls.

The roll of tests/integration/test_roll_haproxy.py: a sandbox cluster (one
master and two slaves on one PostgreSQL database, stand-in web servers),
at 1.1 by IVLE's procedure, then 1.1 -> 1.2 (one additive migration, no
code change: it rolls) with every node's apt-get at once, the two slaves
behind Debian's HAProxy (`http-check disable-on-404` on
/.ivle-maint/pool).  A client asks HAProxy for IVLE's front page RATE
times a second, for BEFORE seconds before the roll and all through it.
Printed: requests sent and failed (a failure is anything but a slave's
page), the p99 latency before the roll and during it and their ratio
(the issue's target: p99 during the roll adds at most 2 s), and each
slave's time out of the pool (join-pool's `out_of_pool`, beside how long
HAProxy's `show servers state`, read every 20 ms, had it taking no new
sessions).  Numbers only: the script exits 1 when a request failed or
the roll did, never on a time.

Run as root in a private mount namespace: `make bench`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "scripts"), str(REPO), str(REPO / "tests")]

from ivle_sandbox import bench, mountns, schema  # noqa: E402
from ivle_sandbox.cluster import node_name  # noqa: E402
from ivle_sandbox.node import Node, build_node  # noqa: E402
from ivle_sandbox.postgres import ThrowawayPostgres  # noqa: E402
from support.cluster_helpers import journal_steps  # noqa: E402
from support.roll_haproxy import ServerWatch, behind_haproxy  # noqa: E402
from support.roll_helpers import ADDITIVE, at_1_1, roll  # noqa: E402
from support.traffic import Answer, Client, percentile  # noqa: E402

ADDED_TARGET = 2.0  # seconds the roll may add to the p99 latency


@contextmanager
def node_maker(root: Path, pg: ThrowawayPostgres) -> Iterator[Any]:
    """build_node(**kw) in a fresh directory under ROOT; every node torn down after."""
    nodes: list[Node] = []
    parent = root / "nodes"
    parent.mkdir(mode=0o755)

    def make(**kwargs: Any) -> Node:
        node = build_node(Path(tempfile.mkdtemp(prefix="n", dir=parent)), pg=pg, **kwargs)
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in reversed(nodes):
            node.teardown()


def front_page(body: bytes) -> bool:
    return b"/+media/+1." in body and body.endswith(b"apache2\n")


def p99(answers: list[Answer]) -> float:
    return percentile([a.latency for a in answers], 0.99)


def main() -> int:
    args, root = bench.begin(__doc__, "ivle-bench-roll-", private_mounts=True, rate=20,
                             before=10)
    with ThrowawayPostgres(root / "pg") as pg:
        schema.ensure_template(pg)
        with node_maker(root, pg) as make:
            cluster, dpkgs = at_1_1(make, root / "dpkg")
            with behind_haproxy(cluster, root / "haproxy", "1.1") as site, \
                    ServerWatch(site) as watch, \
                    Client(site.port, rate=args.rate, good=front_page) as client:
                time.sleep(args.before)
                began = time.monotonic()
                roll(cluster, dpkgs, ADDITIVE)
                ended = time.monotonic()
                answers = client.stop()
            out = {node_name(s): journal_steps(s, new="1.2")["join-pool"]["metrics"]
                   .get("out_of_pool") for s in cluster.slaves}
            seen_out = {name: watch.out_seconds(name) for name in out}
            rolled = all(s.installed_version() == "1.2" for s in cluster.nodes)
    mountns.remove_tree(root)
    before = [a for a in answers if a.sent < began]
    during = [a for a in answers if began <= a.sent <= ended]
    failed = [a for a in answers if not a.ok]
    print(f"roll 1.1 -> 1.2 through HAProxy: {ended - began:.1f}s, client at "
          f"{args.rate} requests/s")
    print(f"requests sent {len(answers)} ({len(before)} before the roll, {len(during)} during "
          f"it), failed {len(failed)}")
    for answer in failed[:5]:
        print(f"  failed at {answer.sent - began:+.2f}s: {answer.seen}")
    before_p99, during_p99 = p99(before), p99(during)
    print(f"p99 latency: before the roll {before_p99 * 1000:.1f} ms, during it "
          f"{during_p99 * 1000:.1f} ms, ratio {during_p99 / before_p99:.2f}, added "
          f"{during_p99 - before_p99:.3f}s (target: at most {ADDED_TARGET:.0f}s added)")
    for name, seconds in out.items():
        shown = f"{seconds:.2f}s" if isinstance(seconds, int | float) else "not recorded"
        print(f"{name}: out of the pool {shown} (join-pool's out_of_pool); HAProxy had it "
              f"taking no new sessions {seen_out[name]:.2f}s")
    return 0 if rolled and not failed else 1


if __name__ == "__main__":
    bench.run(main)

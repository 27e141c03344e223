#!/usr/bin/python3
"""Benchmark on a booted node: a code-only rollback's outage against the upgrade's.

One node booted from the booted tests' tree (scripts/booted) at the
stand-in IVLE 1.0, from the repository whose 1.1 has additive migrations
only: `apt-get upgrade` to 1.1, then `ivle-maint rollback` (code only: the
database stays), each watched by a client probe (a page every 50 ms); the
outage is from the last page of the version left to the first of the one
reached.  Target (issue 26): rollback / upgrade <= 1.0, the median over
--runs.  Prints every number first, exits 1 on a miss.  Needs root; run
as `make bench`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from booted import scenario
from booted.scenario import Guest, Probe

TARGET = 1.0
PROBE_INTERVAL = 0.05


def outage(guest: Guest, old: str, new: str, *cmd: str) -> tuple[float, str]:
    """CMD inside GUEST, watched: the client's outage from OLD's last page to NEW's first."""
    with Probe(guest, old=old, new=new, count=20000, interval=PROBE_INTERVAL) as probe:
        time.sleep(1.0)
        done = guest.run(*cmd)
        time.sleep(1.0)
        probe.stop(quiet=True)
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:3])} failed:\n{done.stdout[-3000:]}")
    if probe.outage is None:
        sys.exit(f"bench: after {' '.join(cmd[:3])} the client saw no {new} page: {probe.line}")
    return float(probe.outage), probe.line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1, help="nodes booted in turn (median)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ivle-bench-rollback-"))
    ratios = []
    try:
        repos = scenario.repositories(work, only=["additive"])
        for run in range(1, args.runs + 1):
            with scenario.prepared_nodes(["ivle-node"], "additive", repos) as guests:
                guest = guests["ivle-node"]
                up, up_line = outage(guest, "1.0", "1.1", "apt-get", "upgrade", "-y", "-q")
                back, back_line = outage(guest, "1.1", "1.0", "ivle-maint", "rollback")
            print(f"run {run}: upgrade {up:.2f}s ({up_line}); code-only rollback "
                  f"{back:.2f}s ({back_line})", flush=True)
            ratios.append(back / up)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(ratios)
    met = ratio <= TARGET
    print(f"code-only rollback / upgrade, client-observed outage: {ratio:.2f} "
          f"(target <= {TARGET}: {'met' if met else 'MISSED'})", flush=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

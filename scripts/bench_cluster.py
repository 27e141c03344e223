#!/usr/bin/python3
"""Benchmark on a booted cluster: the worst slave's outage, the playbook against apt-get.

A master (PostgreSQL, usrmgt) and three slaves, four nodes booted from the
same tree (scripts/booted) in one network namespace, all at the stand-in
IVLE 1.0 on the master's database, a client probe (a page every 50 ms) on
every slave.  The cluster is booted twice: once upgraded by `apt-get
update && apt-get upgrade` started on all four nodes at once (ivle-maint
coordinates them through the database), once by
scripts/ansible/upgrade-cluster.yml over real SSH (every slave down in its
second play, back at once in its fifth: ivle_slave_batch defaults to
'100%').  A slave's outage is from its last old page to its first new one.

Prints every slave's probe, ivle-maint's steps on the worst slave and on
the master (with systemd's jobs inside them) on that slave's clock, and the
ratio worst slave with the playbook / worst slave with apt-get at once;
exits 1 when it is above the target, 1.2.  Needs root; run as `make bench`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from booted import playbook, scenario, timings
from booted.outage import PROBE_INTERVAL
from booted.scenario import Guest, Probe

CLUSTER = ["master", "slave1", "slave2", "slave3"]
TARGET = 1.2


@contextmanager
def probes_on_slaves(guests: dict[str, Guest]) -> Iterator[dict[str, Probe]]:
    """A probe on every slave: a second of old answers first, a second after."""
    with ExitStack() as stack:
        probes = {n: stack.enter_context(Probe(g, count=20000, interval=PROBE_INTERVAL))
                  for n, g in guests.items() if n != "master"}
        time.sleep(1.0)
        yield probes
        time.sleep(1.0)
        for probe in probes.values():
            probe.stop(quiet=True)


def apt_get_at_once(guests: dict[str, Guest], env: tuple[str, ...]) -> None:
    """apt-get update && apt-get upgrade started on every node at once."""
    running = []
    for name, guest in guests.items():
        argv = guest.node.argv("env", guest.sandbox_env, *env, "sh", "-c",
                               "apt-get update -q >/dev/null && apt-get upgrade -y -q")
        running.append((name, subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True)))
    for name, proc in running:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            sys.exit(f"bench: {name}: apt-get upgrade failed:\n{out[-3000:]}")


def with_playbook(guests: dict[str, Guest], mode: str, inventory: Path) -> None:
    done = playbook.run(guests, inventory,
                        *(["ivle_during_upgrade=maintenance"] if mode == "maintenance" else []))
    if done.returncode != 0:
        sys.exit(f"bench: the playbook failed:\n{done.stdout[-4000:]}{done.stderr[-2000:]}")


def upgraded(how: str, mode: str, repos: dict[str, Path], work: Path) -> float:
    """A fresh cluster upgraded HOW; prints what the slaves saw, returns the worst outage."""
    env = ("IVLE_MAINT_DURING_UPGRADE=maintenance",) if mode == "maintenance" else ()
    with scenario.booted_cluster(CLUSTER, repos) as guests:
        inventory = playbook.inventory(guests, work) if how == "playbook" else None
        with probes_on_slaves(guests) as probes:
            started_at = time.monotonic()
            if inventory is not None:
                with_playbook(guests, mode, inventory)
            else:
                apt_get_at_once(guests, env)
            took = time.monotonic() - started_at
        print(f"{how}, {mode} ({took:.1f}s):", flush=True)
        for name, probe in probes.items():
            print(f"  {name}: {probe.line}", flush=True)
            if probe.outage is None:
                sys.exit(f"bench: {name}: the client saw no new page after the old")
            for t, _what, detail in probe.errors()[:5]:  # a booted test's failure; here reported
                print(f"    client error at {probe.start + float(str(t)):.2f}: {detail}")
        worst = max(probes, key=lambda n: float(probes[n].outage))
        window = probes[worst].window()
        for name in (worst, "master"):
            print(f"  {name}'s ivle-maint steps (and systemd's jobs inside them), "
                  f"on {worst}'s outage:")
            steps = timings.maint_steps(guests[name])
            jobs = timings.systemd_jobs(guests[name], started_at)
            lines = timings.step_lines(steps, jobs, window)
            print("\n".join(lines if name == worst else lines[:-1]), flush=True)
        return float(probes[worst].outage)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--mode", choices=("stop", "maintenance"), default="stop",
                        help="[web] during_upgrade of the run (default: stop)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root")
    work = Path(tempfile.mkdtemp(prefix="ivle-bench-cluster-"))
    try:
        repos = scenario.repositories(work, only=["good"])
        at_once = upgraded("apt-get upgrade on every node at once", args.mode, repos, work)
        played = upgraded("playbook", args.mode, repos, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = played / at_once
    print(f"worst slave's outage, playbook / apt-get at once ({args.mode} mode): "
          f"{played:.2f}s / {at_once:.2f}s = {ratio:.2f} "
          f"(target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

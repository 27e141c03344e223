#!/usr/bin/python3
"""The end-to-end scenarios, run inside the throwaway chroot by scripts/e2e/run.

    /srv/e2e/inside.py SCENARIO
    /srv/e2e/inside.py node-init | node ACTION ROLE NAME PORT   (cluster nodes)

SCENARIO: lifecycle, upgrade, failed-migration, failed-preinst, reinstall
or cluster (a master and three slaves, each with its own root, mount and
PID namespaces, sharing the master's jail tree, upgraded by apt-get at
once in a random order; the logs must show no slave's web server started
before the master's user jails and usrmgt restart were done).

It runs as PID 1 of a private PID, mount and network namespace: it reaps
orphans (daemons, killed consoles) so nothing lingers as a zombie, and
when it exits the kernel ends every process left in the namespace.

The chroot is Debian bookworm with PostgreSQL; /srv/e2e holds the
ivle-maint .deb, the stand-in `ivle` packages (pool/), this file and the
sandbox helpers it reuses (ivle_sandbox/, pure Python).  The
chroot owns its /usr/sbin/policy-rc.d (allow everything) and a
/usr/sbin/runlevel that answers "N 2", so invoke-rc.d runs init scripts
for real.  Every check prints "PASS <what>" as it passes; the first
failure prints "FAIL <what>: <detail>" and exits 1.

This file is the entry point; the driver/ package beside it holds the
settings (config), the PASS/FAIL lines (harness), one node (node), the
single-node scenarios (scenarios) and the cluster (cluster).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from driver.cluster import node_command, node_init, scenario_cluster
from driver.harness import Failed
from driver.scenarios import (
    scenario_failed_migration,
    scenario_failed_preflight,
    scenario_failed_preinst,
    scenario_lifecycle,
    scenario_reinstall,
    scenario_rollback,
    scenario_rollback_failed_migration,
    scenario_upgrade,
)

SCENARIOS: dict[str, Callable[[], None]] = {
    "lifecycle": scenario_lifecycle,
    "upgrade": scenario_upgrade,
    "failed-migration": scenario_failed_migration,
    "failed-preinst": scenario_failed_preinst,
    "failed-preflight": scenario_failed_preflight,
    "reinstall": scenario_reinstall,
    "rollback": scenario_rollback,
    "rollback-failed-migration": scenario_rollback_failed_migration,
    "cluster": scenario_cluster,
}


def main(name: str) -> int:
    started = time.monotonic()
    try:
        SCENARIOS[name]()
    except (Failed, subprocess.SubprocessError, OSError) as exc:
        print(f"FAIL {exc}", flush=True)
        print(f"SCENARIO {name}: FAILED after {time.monotonic() - started:.0f}s", flush=True)
        return 1
    print(f"SCENARIO {name}: PASSED in {time.monotonic() - started:.0f}s", flush=True)
    return 0


def as_init(name: str) -> int:
    """PID 1 of the namespace: run the scenario in a child and reap every orphan."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    child = os.fork()
    if child == 0:
        os._exit(main(name))
    while True:
        pid, status = os.wait()
        if pid == child:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    if sys.argv[1:] == ["node-init"]:
        sys.exit(node_init())
    if sys.argv[1:2] == ["node"] and len(sys.argv) == 6:
        sys.exit(node_command(*sys.argv[2:]))
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: inside.py {{{'|'.join(SCENARIOS)}}}")
    sys.exit(as_init(sys.argv[1]) if os.getpid() == 1 else main(sys.argv[1]))

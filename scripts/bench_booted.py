#!/usr/bin/python3
"""Benchmark on booted nodes: the outage a student sees, ivle-maint against by hand.

Two identical nodes booted from the same tree (scripts/booted), in one
network namespace, both at the stand-in IVLE 1.0 with the same users,
jails and consoles.  Twin A is upgraded by `apt-get upgrade` (IVLE's
package calls ivle-maint); twin B runs a package without ivle-maint's lines
and is upgraded by IVLE's documented commands typed in sequence (no pause
between them).  A client probe (one request every 100 ms) watches each;
the outage is from the last old page to the first new one.  A third twin
is upgraded by ivle-maint in maintenance mode ([web] during_upgrade): its
outage is the same kind of window, but answered by the 503 maintenance
page instead of refused connections.  Then each real
service's stop and start time on twin A (apache2 after serving a request,
PostgreSQL, usrmgt).

Prints the ratio of A's outage to B's and ivle-maint's own step times (no
target: IVLE's commands take no backup and check nothing, ivle-maint does
both inside the window); exits 1 only when a client saw an error.  Needs
root; run as `make bench`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from booted import scenario
from booted.scenario import Guest, Probe

STEP_LINE = re.compile(r"^ivle-maint: (.+?): .*\((\d+\.\d+)s\)$")
# IVLE's upgrade procedure, typed in sequence on a packaged single node.
BY_HAND = """\
set -e
/etc/init.d/apache2 stop
pkill -f '^/usr/bin/python3 /usr/share/ivle/services/python-console' || true
ivle-mountallusers -u
apt-get update -q >/dev/null
apt-get upgrade -y -q
for f in 20100301-01 20100301-02; do
    runuser -u postgres -- psql -q -p {db} -d ivle -v ON_ERROR_STOP=1 \\
        -f /usr/share/ivle/userdb/migrations/$f.sql
done
ivle-buildjail -u >/dev/null
ivle-remakeuser -a
sed -i 's/^version = 1.0$/version = 1.1/' /etc/ivle/ivle.conf
/etc/init.d/ivle-usrmgt-server restart
/etc/init.d/apache2 start
"""


def watched(guest: Guest, *cmd: str) -> tuple[Probe, float]:
    with Probe(guest) as probe:  # killed if anything below fails
        time.sleep(1.0)
        started = time.monotonic()
        done = guest.run(*cmd)
        took = time.monotonic() - started
        if done.returncode != 0:
            sys.exit(f"bench: {' '.join(cmd[:3])} failed on {guest.node.name}:\n"
                     f"{done.stdout[-3000:]}")
        time.sleep(1.0)
        probe.stop()
    for line in done.stdout.splitlines():
        step = STEP_LINE.match(line)
        if step and "already done" not in line:
            print(f"  step {step.group(1)}: {step.group(2)}s", flush=True)
    if probe.counts["errors"] or probe.outage is None:
        sys.exit(f"bench: {guest.node.name}: the client saw errors or no new page: {probe.line}")
    return probe, took


def timed(guest: Guest, *cmd: str) -> float:
    started = time.monotonic()
    guest.node.run(*cmd)
    return time.monotonic() - started


def service_times(guest: Guest) -> list[str]:
    lines = []
    url = f"http://127.0.0.1:{guest.ports.web}/"
    for unit in ("apache2", "postgresql@15-main", "ivle-usrmgt-server"):
        if unit == "apache2":
            guest.node.run("curl", "-sf", "-o", "/dev/null", url)  # one served request first
        stop = timed(guest, "systemctl", "stop", unit)
        start = timed(guest, "systemctl", "start", unit)
        lines.append(f"  {unit}: stop {stop:.2f}s, start {start:.2f}s")
    return lines


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ivle-bench-booted-"))
    try:
        repos = scenario.repositories(work)
        names = {"ivle-maint-twin": "good", "by-hand-twin": "manual",
                 "maintenance-twin": "good"}
        with scenario.prepared_nodes(list(names), names, repos) as guests:
            auto, by_hand = guests["ivle-maint-twin"], guests["by-hand-twin"]
            probe_a, took_a = watched(auto, "apt-get", "upgrade", "-y", "-q")
            probe_m, took_m = watched(guests["maintenance-twin"], "env",
                                      "IVLE_MAINT_DURING_UPGRADE=maintenance",
                                      "apt-get", "upgrade", "-y", "-q")
            script = BY_HAND.format(db=by_hand.ports.db)
            probe_b, took_b = watched(by_hand, "sh", "-c", script)
            times = service_times(auto)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = probe_a.outage / probe_b.outage
    print(f"ivle-maint (apt-get upgrade, {took_a:.1f}s): {probe_a.line}")
    print(f"ivle-maint, maintenance mode ({took_m:.1f}s): {probe_m.line}")
    print(f"by hand (IVLE's commands in sequence, {took_b:.1f}s): {probe_b.line}")
    print(f"outage ratio ivle-maint / by hand: {probe_a.outage:.1f}s / {probe_b.outage:.1f}s"
          f" = {ratio:.2f}")
    print(f"outage stop mode / maintenance mode: {probe_a.outage:.1f}s refused / "
          f"{probe_m.outage:.1f}s answered 503 ({probe_m.counts['refused']} refused)")
    print("service stop and start times (systemctl, booted node):")
    print("\n".join(times))
    return 0


if __name__ == "__main__":
    if subprocess.run(["id", "-u"], capture_output=True, text=True, check=True).stdout != "0\n":
        sys.exit("bench: needs root")
    sys.exit(main())

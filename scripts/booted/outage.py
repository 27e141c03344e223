"""The client-observed outage of one booted node's upgrade (benchmarks).

`Size` is what a node holds (users with jails, consoles, new migrations,
how long IVLE's stand-ins work); `watch` runs an upgrade command inside a
node while a probe asks for a page every 50 ms and returns a `Measured`:
the probe's answers and outage (last old page to first new page),
ivle-maint's steps and systemd's jobs on one clock (timings.py), and for
the by-hand upgrade the time of each typed command.  `by_hand_script` is
IVLE's documented procedure as an administrator types it.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field

from ivle_sandbox.releases import many  # scripts/ is on sys.path, as for `booted`

from . import standin, timings
from .scenario import Guest, Probe

PROBE_INTERVAL = 0.05
CONSOLE = "^/usr/bin/python3 /usr/share/ivle/services/python-console"
BY_HAND_TIMES = "/root/by-hand.times"


@dataclass(frozen=True)
class Size:
    """What a benchmark node holds and how long IVLE's stand-ins work on it."""

    name: str
    users: int = 5  # the setup's five (scripts/e2e/driver/config.py)
    consoles: int = 3
    migrations: int = 2  # new in 1.1: 1.1's two, then releases.many's
    jail_build: float = 0.0  # ivle-buildjail's fixed work, seconds
    remake_per_user: float = 0.0  # ivle-remakeuser's, seconds per user
    target: float = 1.0  # outage ratio ivle-maint / by hand

    def describe(self) -> str:
        return (f"{self.users} users with jails, {self.consoles} consoles, "
                f"{self.migrations} new migrations, jail build {self.jail_build:g}s, "
                f"remake {self.remake_per_user * 1000:g} ms per user")

    def new_migrations(self) -> dict[str, str]:
        """The migrations 1.1 adds: its own two, then small IVLE-shaped ones."""
        ours = standin.chroot_standin.MIGRATIONS_B_NEW
        return {**ours, **many(max(0, self.migrations - len(ours)))}


# IVLE's upgrade procedure (doc/man/upgrade.rst), typed in sequence on a
# packaged node: the apt lists are already fresh (as for ivle-maint's run),
# and the console kill is waited for before the jails are unmounted (as
# scripts/bench_upgrade.py's by-hand run does).  `stamp` (bash's
# $EPOCHREALTIME, no process) times each command.
BY_HAND = """\
set -e
stamp() {{ echo "$EPOCHREALTIME $1" >> {times}; }}
: > {times}
stamp begin
/etc/init.d/apache2 stop
stamp "apache2 stop"
pkill -f '{console}' || true
while pgrep -f '{console}' >/dev/null; do sleep 0.05; done
stamp "kill consoles"
ivle-mountallusers -u
stamp "ivle-mountallusers -u"
apt-get upgrade -y -q >/dev/null
stamp "apt-get upgrade"
for f in {migrations}; do
    runuser -u postgres -- psql -q -X -p {db} -d ivle -v ON_ERROR_STOP=1 \\
        -f /usr/share/ivle/userdb/migrations/$f
done
stamp "psql -f, {count} migrations"
ivle-buildjail -u >/dev/null
stamp "ivle-buildjail -u"
ivle-remakeuser -a
stamp "ivle-remakeuser -a"
sed -i 's/^version = 1.0$/version = 1.1/' /etc/ivle/ivle.conf
stamp "media version"
/etc/init.d/ivle-usrmgt-server restart
stamp "usrmgt restart"
/etc/init.d/apache2 start
stamp "apache2 start"
"""


def by_hand_script(guest: Guest, size: Size) -> str:
    names = sorted(size.new_migrations())
    return BY_HAND.format(times=BY_HAND_TIMES, console=CONSOLE, db=guest.ports.db,
                          migrations=" ".join(names), count=len(names))


@dataclass
class Measured:
    """One watched upgrade."""

    label: str
    probe: Probe
    took: float
    steps: list[timings.Span] = field(default_factory=list)
    jobs: list[timings.Span] = field(default_factory=list)
    typed: list[timings.Span] = field(default_factory=list)  # by hand: each command

    @property
    def outage(self) -> float:
        return float(self.probe.outage)

    def lines(self) -> list[str]:
        out = [f"  {self.label} ({self.took:.1f}s): {self.probe.line}"]
        window = self.probe.window()
        # An error is a booted test's failure; here it is reported, with when.
        for t, _what, detail in self.probe.errors()[:5]:
            since = self.probe.start + float(str(t)) - window[0] if window else 0.0
            out.append(f"    client error at outage {since:+.2f}s: {detail}")
        if self.steps:
            out.append("    ivle-maint's steps (and systemd's jobs inside them):")
            out += timings.step_lines(self.steps, self.jobs, window)
        if self.typed:
            out.append("    typed commands: " + ", ".join(f"{s.name} {s.seconds:.2f}s"
                                                        for s in self.typed))
            out.append("    systemd's jobs: " + ", ".join(f"{j.name} {j.seconds:.2f}s"
                                                        for j in self.jobs))
        return out


def typed_commands(guest: Guest) -> list[timings.Span]:
    """The by-hand script's stamps: one span per command (wall clock, durations only)."""
    text = guest.node.run("cat", BY_HAND_TIMES, check=False).stdout
    stamps = [(float(t), name) for t, name in (line.split(" ", 1) for line in text.splitlines())]
    return [timings.Span(name, before, t)
            for (before, _n), (t, name) in itertools.pairwise(stamps)]


def watch(guest: Guest, label: str, *cmd: str) -> Measured:
    """cmd inside guest, a probe watching (client errors are reported, not fatal);
    exits when cmd fails or the client never saw the new page."""
    # The probe is killed if anything below fails.
    with Probe(guest, count=20000, interval=PROBE_INTERVAL) as probe:
        time.sleep(1.0)
        started = time.monotonic()
        done = guest.run(*cmd)
        took = time.monotonic() - started
        if done.returncode != 0:
            sys.exit(f"bench: {label}: {' '.join(cmd[:3])} failed on {guest.node.name}:\n"
                     f"{done.stdout[-3000:]}")
        time.sleep(1.0)
        probe.stop(quiet=True)
    if probe.outage is None:
        sys.exit(f"bench: {label}: the client saw no new page after the old: {probe.line}")
    by_hand = cmd[:2] == ("bash", "-c")
    return Measured(label, probe, took,
                    steps=[] if by_hand else timings.maint_steps(guest),
                    jobs=timings.systemd_jobs(guest, started),
                    typed=typed_commands(guest) if by_hand else [])


def service_times(guest: Guest) -> list[str]:
    """systemctl stop and start of each real service, timed from the host."""
    lines = []
    url = f"http://127.0.0.1:{guest.ports.web}/"
    for unit in ("apache2", "postgresql@15-main", "ivle-usrmgt-server"):
        if unit == "apache2":
            guest.node.run("curl", "-sf", "-o", "/dev/null", url)  # one served request first
        times = []
        for verb in ("stop", "start"):
            started = time.monotonic()
            guest.node.run("systemctl", verb, unit)
            times.append(time.monotonic() - started)
        lines.append(f"  {unit}: stop {times[0]:.2f}s, start {times[1]:.2f}s")
    return lines

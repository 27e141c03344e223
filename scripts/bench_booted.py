#!/usr/bin/python3
"""Benchmark on booted nodes: the outage a student sees, ivle-maint against by hand.

For each node size, three identical nodes booted from the same tree
(scripts/booted), in one network namespace, all at the stand-in IVLE 1.0
with the same users, jails and consoles: one is upgraded by `apt-get
upgrade` (IVLE's package calls ivle-maint), one by `apt-get upgrade` in
maintenance mode (IVLE_MAINT_DURING_UPGRADE=maintenance: a 503 page
instead of refused connections), and one, whose package has no ivle-maint
lines, by IVLE's documented commands typed in sequence (no pause between
them; scripts/booted/outage.py).  A client probe (a page every 50 ms)
watches each; the outage is from the last old page to the first new one.

Sizes: the small node (the booted tests' five users, three consoles, two
new migrations, stand-ins without fixed work), target ratio <= 1.0; and
an IVLE-sized one (500 users with jails, 20 consoles, 20 new migrations, a
jail build of 5 s, 5 ms per user remade: as scripts/bench_upgrade.py),
target <= 0.5.  Ratios: outage of ivle-maint (stop mode, maintenance mode)
/ outage by hand.  For every ivle-maint run, each step's time (its
journal) beside systemd's own job times inside it (the node's journal, one
clock), and for the by-hand run each typed command's time.

Prints every number first, then exits 1 when a ratio misses its target
(the median over --runs).  A client error (a reset connection, a 500) is
printed, with when it came in the outage, but is the booted tests'
concern, not a benchmark's.  Needs root; run as `make bench`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from booted import scenario, standin
from booted.outage import Measured, Size, by_hand_script, service_times, watch

SMALL = Size("small node", target=1.0)
IVLE_SIZED = Size("IVLE-sized node", users=500, consoles=20, migrations=20, jail_build=5.0,
                  remake_per_user=0.005, target=0.5)
MAINTENANCE = ("env", "IVLE_MAINT_DURING_UPGRADE=maintenance")
MODES = ("stop mode", "maintenance mode")


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     epilog="The IVLE-sized node's defaults: "
                                     + IVLE_SIZED.describe() + ".")
    parser.add_argument("--users", type=int, default=IVLE_SIZED.users,
                        help="the IVLE-sized node's users, each with a jail")
    parser.add_argument("--consoles", type=int, default=IVLE_SIZED.consoles,
                        help="its python-console processes")
    parser.add_argument("--migrations", type=int, default=IVLE_SIZED.migrations,
                        help="new in 1.1 (at least 2)")
    parser.add_argument("--jail-build", type=float, default=IVLE_SIZED.jail_build,
                        help="seconds ivle-buildjail works")
    parser.add_argument("--remake-per-user", type=float, default=IVLE_SIZED.remake_per_user,
                        help="seconds ivle-remakeuser works per user")
    parser.add_argument("--only", choices=("small", "sized"),
                        help="one size only (default: both)")
    parser.add_argument("--runs", type=int, default=1,
                        help="nodes booted and upgraded this many times per size; the "
                             "targets apply to the median ratio")
    parser.add_argument("--service-times", action="store_true",
                        help="also time systemctl stop/start of each real service")
    return parser.parse_args()


def repo_names(size: Size) -> tuple[str, str]:
    return (f"good-{size.migrations}", f"manual-{size.migrations}")


def build_repositories(work: Path, sizes: list[Size]) -> dict[str, Path]:
    """An ivle-maint and a by-hand repository per migration count."""
    more = {}
    for size in sizes:
        good, manual = repo_names(size)
        new = standin.with_migrations(standin.version_b(), size.new_migrations())
        more[good] = (standin.version_a(), new)
        more[manual] = (standin.by_hand(standin.version_a()), standin.by_hand(new))
    return scenario.repositories(work, only=[], more=more)


def one_run(size: Size, repos: dict[str, Path], times: bool) -> dict[str, Measured]:
    good, manual = repo_names(size)
    names = {"ivle-maint-twin": good, "maintenance-twin": good, "by-hand-twin": manual}
    with scenario.prepared_nodes(list(names), names, repos) as guests:
        for guest in guests.values():
            guest.size(size.users, size.consoles, size.jail_build, size.remake_per_user)
        auto, maint, hand = (guests[n] for n in names)
        runs = {
            "stop mode": watch(auto, "ivle-maint, stop mode (apt-get upgrade)",
                               "apt-get", "upgrade", "-y", "-q"),
            "maintenance mode": watch(maint, "ivle-maint, maintenance mode (apt-get upgrade)",
                                      *MAINTENANCE, "apt-get", "upgrade", "-y", "-q"),
            "by hand": watch(hand, "by hand (IVLE's commands typed in sequence)",
                             "bash", "-c", by_hand_script(hand, size)),
        }
        if times:
            print("  systemctl stop and start of each real service (booted node):")
            print("\n".join(service_times(auto)), flush=True)
    return runs


def main() -> int:
    args = options()
    if os.geteuid() != 0:
        sys.exit("bench: needs root")
    sized = Size("IVLE-sized node", args.users, args.consoles, max(2, args.migrations),
                 args.jail_build, args.remake_per_user, target=IVLE_SIZED.target)
    sizes = {"small": [SMALL], "sized": [sized], None: [SMALL, sized]}[args.only]
    work = Path(tempfile.mkdtemp(prefix="ivle-bench-booted-"))
    ratios: dict[tuple[str, str], list[float]] = {}
    try:
        repos = build_repositories(work, sizes)
        for size in sizes:
            for run in range(args.runs):
                print(f"{size.name}, run {run + 1} of {args.runs}: {size.describe()}",
                      flush=True)
                runs = one_run(size, repos, args.service_times and size is sizes[0]
                               and run == 0)
                for measured in runs.values():
                    print("\n".join(measured.lines()), flush=True)
                for mode in MODES:
                    ratio = runs[mode].outage / runs["by hand"].outage
                    ratios.setdefault((size.name, mode), []).append(ratio)
                    print(f"  ratio {mode}: {runs[mode].outage:.2f}s / "
                          f"{runs['by hand'].outage:.2f}s by hand = {ratio:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missed = 0
    print("client-observed outage, ivle-maint / IVLE's commands typed in sequence:")
    for size in sizes:
        for mode in MODES:
            seen = ratios[(size.name, mode)]
            median = statistics.median(seen)
            ok = median <= size.target
            missed += not ok
            each = f" (median of {', '.join(f'{r:.2f}' for r in seen)})" if len(seen) > 1 else ""
            print(f"  {size.name}, {mode}: {median:.2f}{each}"
                  f" (target <= {size.target}: {'PASS' if ok else 'FAIL'})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Benchmark: unmounting the user jails, and streaming ivle-buildjail's output.

Unmount: 3,000 users' jails (9,000 bind mounts: the template read-only,
home, tmp) mounted for real in this private mount namespace, twice.  Once
unmounted the way `ivle-mountallusers -u` does it, umount(8) once per
mount, three per user; once by `ivle-maint mounts unmount` as a whole
process.  Printed: both times and their ratio (target: ivle-maint at
least 10x faster).

Streaming: `ivle-maint jails rebuild` as a whole process while the
ivle-buildjail stand-in prints 1 MB, then 100 MB of apt-like output (all
of it goes to ivle-maint's log).  Printed: ivle-maint's peak resident
memory (VmHWM) for each, against the 60 MB target (ratio at most 1.0),
and how much the peak grew with 100 times the output (flat: under 5 MB).

Run as root in a private mount namespace: `make bench`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "scripts"), str(REPO)]

from ivle_sandbox import bench, mountns, schema  # noqa: E402
from ivle_sandbox.cluster import env_of  # noqa: E402
from ivle_sandbox.node import Node, build_node  # noqa: E402
from ivle_sandbox.postgres import ThrowawayPostgres  # noqa: E402

SPEEDUP_TARGET = 10.0
MEMORY_TARGET_MB = 60.0
FLAT_MB = 5.0
MB = 1 << 20
CALIBRATION_LINES = 10_000


# ------------------------------------------------------------ unmount


def user_logins(count: int) -> list[str]:
    return [schema.login_name(i) for i in range(1, count + 1)]


def make_user_dirs(node: Node, logins: list[str]) -> None:
    for login in logins:
        for sub in ("home", "tmp"):
            (node.jails_src / login / sub).mkdir(parents=True, exist_ok=True)


def mount_all(node: Node, logins: list[str]) -> int:
    for login in logins:
        mountns.mount_user_jail(node.template, node.jails_src, node.jail_mounts, login,
                                checked=True)
    return len(mountns.mounts_under(node.jail_mounts))


def umount_per_mount(node: Node, logins: list[str]) -> None:
    """ivle-mountallusers -u: umount(8) on each of a user's three mounts."""
    for login in logins:
        jail = node.jail_mounts / login
        for point in (jail / "tmp", jail / "home", jail):
            subprocess.run(["umount", str(point)], check=True, stdin=subprocess.DEVNULL)


def bench_unmount(node: Node, users: int) -> bool:
    logins = user_logins(users)
    make_user_dirs(node, logins)
    times = {}
    for name, unmount in (("umount(8) per mount", lambda: umount_per_mount(node, logins)),
                          ("ivle-maint mounts unmount",
                           lambda: bench.ivle_maint_ok(node, "mounts", "unmount"))):
        mounted = mount_all(node, logins)
        started = time.perf_counter()
        unmount()
        times[name] = time.perf_counter() - started
        left = mountns.mounts_under(node.jail_mounts)
        if left:
            raise SystemExit(f"bench: {name} left {len(left)} mounts, first {left[0].mountpoint}")
    by_hand, ours = times.values()
    speedup = by_hand / ours
    print(f"{users} users, {mounted} jail bind mounts")
    print(f"umount(8) once per mount (ivle-mountallusers -u): {by_hand:.2f}s")
    print(f"ivle-maint mounts unmount (whole process):        {ours:.2f}s")
    verdict = "PASS" if speedup >= SPEEDUP_TARGET else "FAIL"
    print(f"speed-up: {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x: {verdict})")
    return speedup >= SPEEDUP_TARGET


# ------------------------------------------------------------ streaming


def peak_rss_mb(pid: int) -> float | None:
    """The process's resident high-water mark (VmHWM), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None  # a zombie has no memory lines


def bytes_per_line(node: Node) -> float:
    """What one line of the stand-in's apt output weighs, measured on a run of it."""
    node.set_fakes("ivle-buildjail", lines=CALIBRATION_LINES)
    done = subprocess.run([str(node.commands["ivle-buildjail"]), "-u"], env=env_of(node),
                          capture_output=True, check=True)
    return len(done.stdout) / CALIBRATION_LINES


def rebuild_peak(node: Node, output_bytes: int, line_bytes: float) -> tuple[float, float]:
    """(peak MB, seconds) of `ivle-maint jails rebuild` over OUTPUT_BYTES of output."""
    node.set_fakes("ivle-buildjail", lines=round(output_bytes / line_bytes))
    started = time.perf_counter()
    proc = subprocess.Popen(bench.ivle_maint_argv("jails", "rebuild"), env=env_of(node),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    peak = 0.0
    while proc.poll() is None:
        seen = peak_rss_mb(proc.pid)
        peak = max(peak, seen or 0.0)
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ivle-maint jails rebuild exited {proc.returncode}: "
                         f"{proc.stderr.read().strip() if proc.stderr else ''}")
    return peak, seconds


def bench_streaming(node: Node) -> bool:
    line_bytes = bytes_per_line(node)
    small, small_s = rebuild_peak(node, 1 * MB, line_bytes)
    large, large_s = rebuild_peak(node, 100 * MB, line_bytes)
    log_mb = sum(p.stat().st_size for p in node.maint_log_dir.iterdir()) / MB
    growth = large - small
    ratio = large / MEMORY_TARGET_MB
    print(f"ivle-maint jails rebuild, 1 MB of output:   peak {small:.1f} MB ({small_s:.1f}s)")
    print(f"ivle-maint jails rebuild, 100 MB of output: peak {large:.1f} MB ({large_s:.1f}s; "
          f"log now {log_mb:.0f} MB)")
    print(f"ratio to the {MEMORY_TARGET_MB:g} MB target: {ratio:.2f} "
          f"({'PASS' if ratio <= 1 else 'FAIL'}); growth with 100x the output: "
          f"{growth:+.1f} MB (flat, < {FLAT_MB:g} MB: {'PASS' if growth < FLAT_MB else 'FAIL'})")
    return ratio <= 1 and growth < FLAT_MB


def main() -> int:
    args, root = bench.begin(__doc__, "ivle-bench-jails-", private_mounts=True, users=3000)
    with ThrowawayPostgres(root / "pg") as pg:
        node = build_node(root / "node", pg=pg, users=0, role="both", mount=False,
                          services=False)
        try:
            unmounted = bench_unmount(node, args.users)
            streamed = bench_streaming(node)
        finally:
            node.teardown()
    return 0 if unmounted and streamed else 1


if __name__ == "__main__":
    bench.run(main)

#!/usr/bin/python3
"""Benchmark: applying migrations, and `ivle-maint db status`.

One throwaway PostgreSQL server, two identical IVLE databases (3 users,
1.0's migrations recorded as applied), the same 300 small IVLE-shaped
migration files (own BEGIN/COMMIT, none, $$ bodies, E'' strings).  In one
run:

- by hand, as IVLE's upgrade procedure says: a loop of `psql -v ON_ERROR_STOP=1 -d DB -f FILE` per
  file, against `ivle-maint db migrate` as a whole process, its pg_dump
  backup included.  Printed: both times and their ratio (target: ivle-maint
  at least 5x faster);
- `ivle-maint db status` as a whole process on the database that now
  records 302 migrations: the median wall time of several runs against
  the 300 ms target (ratio at most 1.0).

Both databases must end with the same tables, or the benchmark fails.
Run as root: `make bench`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "scripts"), str(REPO)]

from ivle_sandbox import bench, schema  # noqa: E402
from ivle_sandbox.node import Node, build_node, install_version  # noqa: E402
from ivle_sandbox.postgres import ThrowawayPostgres  # noqa: E402
from ivle_sandbox.releases import OLD, many  # noqa: E402

SPEEDUP_TARGET = 5.0
STATUS_TARGET_S = 0.300
STATUS_RUNS = 9


def make_node(root: Path, pg: ThrowawayPostgres, new: dict[str, str]) -> Node:
    """A master at 1.0 (baselined) with 1.1's files, NEW among them, unpacked."""
    node = build_node(root, pg=pg, users=3, role="master", mount=False, services=False)
    install_version(node, "1.0", OLD)
    bench.ivle_maint_ok(node, "db", "baseline", max(OLD).removesuffix(".sql"))
    install_version(node, "1.1", {**OLD, **new})
    return node


def timed(func: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    func(*args)
    return time.perf_counter() - started


def psql_loop(node: Node, files: list[Path]) -> None:
    """IVLE's upgrade procedure, 'Patching the database': one psql per file, in order."""
    pg = node.pg
    for path in files:
        subprocess.run(
            ["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir),
             "-p", str(pg.port), "-U", pg.superuser, "-d", node.dbname, "-f", str(path)],
            check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )


def migrate(node: Node) -> None:
    bench.ivle_maint_ok(node, "db", "migrate", "--package-version", "1.1")


def tables(node: Node) -> list[str]:
    conn = node.pg.connect(node.dbname, node.pg.ivle_user)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'bench_%' "
                        "ORDER BY tablename")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def status_times(node: Node, runs: int) -> list[float]:
    """Wall time of whole `ivle-maint db status` processes (0: nothing pending)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        bench.ivle_maint_ok(node, "db", "status")
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    args, root = bench.begin(__doc__, "ivle-bench-db-", migrations=300)
    new = many(args.migrations)
    with ThrowawayPostgres(root / "pg") as pg:
        schema.ensure_template(pg)
        hand_node = make_node(root / "by-hand", pg, new)
        maint_node = make_node(root / "maint", pg, new)
        try:
            files = [hand_node.migrations / name for name in sorted(new)]
            by_hand = timed(psql_loop, hand_node, files)
            ours = timed(migrate, maint_node)
            if tables(hand_node) != tables(maint_node) or len(tables(maint_node)) != len(new):
                raise SystemExit("bench: the two databases differ after migrating")
            status = status_times(maint_node, STATUS_RUNS)
        finally:
            hand_node.teardown()
            maint_node.teardown()
    speedup = by_hand / ours
    median = statistics.median(status)
    ratio = median / STATUS_TARGET_S
    print(f"{args.migrations} IVLE-shaped migrations, one server")
    print(f"psql -f per file (by hand):  {by_hand:.2f}s")
    print(f"ivle-maint db migrate:        {ours:.2f}s (whole process, pg_dump backup included)")
    print(f"speed-up psql/ivle-maint: {speedup:.1f}x "
          f"(target >= {SPEEDUP_TARGET:g}x: {'PASS' if speedup >= SPEEDUP_TARGET else 'FAIL'})")
    print(f"ivle-maint db status, {args.migrations + len(OLD)} recorded: median "
          f"{median * 1000:.0f} ms over {STATUS_RUNS} runs (min {min(status) * 1000:.0f} ms)")
    print(f"ratio to the 300 ms target: {ratio:.2f} ({'PASS' if ratio <= 1 else 'FAIL'})")
    return 0 if speedup >= SPEEDUP_TARGET and ratio <= 1 else 1


if __name__ == "__main__":
    bench.run(main)

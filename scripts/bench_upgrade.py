#!/usr/bin/python3
"""Benchmark: the web-down window of `ivle-maint upgrade` against IVLE's
upgrade procedure typed by hand.

Two identical throwaway nodes (500 users, jails mounted, consoles, both
services; IVLE's stand-ins doing fixed work), both at 1.0 with 1.1's code
and 20 new migrations installed.  On one, IVLE's upgrade procedure's commands run in
sequence as a shell script, as an administrator would type them; on the
other, `ivle-maint upgrade`.  Printed: each web-down window, their ratio
(target: at most 1.0), and ivle-maint's own share of its window, that is
everything but external commands and SQL (target: under 2%), measured
by timing every call that leaves the process from the steps in the window.
Waiting for SIGTERMed consoles to exit is the consoles' own shutdown (the
the by-hand loop waits for it too): it is counted apart, as "exit waits".

Run as root in a private mount namespace: `make bench`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "scripts"), str(REPO)]

from ivle_sandbox import bench, schema  # noqa: E402
from ivle_sandbox.node import Node, build_node, install_version  # noqa: E402
from ivle_sandbox.postgres import ThrowawayPostgres  # noqa: E402
from ivle_sandbox.releases import OLD, many  # noqa: E402

# Fixed work of IVLE's programs, identical for both runs: modest stand-ins
# for apt refreshing the jail (minutes on a real site) and for rebuilding
# each user's jail.  ivle-mountallusers' work is its real umount(8) calls.
FAKE_WORK = {
    "ivle-buildjail": {"delay": 5.0},
    "ivle-remakeuser": {"delay_per_user": 0.005},
    "ivle-mountallusers": {"delay": 0.0},
}

BY_HAND_SCRIPT = """\
#!/bin/bash
# IVLE's upgrade procedure, typed in order (IVLE's doc/man/upgrade.rst).
set -eu
date +%s.%N > {stamps}
{initd}/apache2 stop
pkill -f '^/usr/bin/python {console} ' || true
while pgrep -f '^/usr/bin/python {console} ' >/dev/null; do sleep 0.05; done
IVLECONF={conf_dir} {fakes}/ivle-mountallusers -u
for f in {migrations}; do
    runuser -u postgres -- psql -q -X -v ON_ERROR_STOP=1 -h {socket} -p {port} \\
        -d {db} -f "$f" >/dev/null
done
IVLECONF={conf_dir} {fakes}/ivle-buildjail -u >/dev/null
IVLECONF={conf_dir} {fakes}/ivle-remakeuser -a
sed -i 's/^version = .*/version = 1.1/' {conf_dir}/ivle.conf
{initd}/ivle-usrmgt-server restart
{initd}/apache2 start
date +%s.%N >> {stamps}
"""


def make_node(root: Path, pg: ThrowawayPostgres, users: int, migrations: int) -> Node:
    node = build_node(root, pg=pg, users=users, consoles=5, media_version="1.0")
    install_version(node, "1.0", OLD)
    for program, values in FAKE_WORK.items():
        node.set_fakes(program, **values)
    # 1.0's migrations are recorded as applied (what the first upgrade's
    # baseline does), then 1.1 is unpacked: the same start for both runs.
    bench.ivle_maint_ok(node, "db", "baseline", "20090212-01")
    install_version(node, "1.1", {**OLD, **many(migrations)})
    # chmod: the by-hand psql runs as postgres and must read the files.
    node.migrations.chmod(0o755)
    return node


def by_hand_window(node: Node, new: list[str]) -> float:
    stamps = node.root / "by-hand-stamps"
    script = node.root / "by-hand-upgrade.sh"
    script.write_text(BY_HAND_SCRIPT.format(
        stamps=stamps, initd=node.initd, console=node.console_script, conf_dir=node.conf_dir,
        fakes=node.fakes, migrations=" ".join(str(node.migrations / n) for n in new),
        socket=node.pg.socket_dir, port=node.pg.port, db=node.dbname,
    ))
    subprocess.run(["bash", str(script)], check=True, stdout=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL)
    start, end = (float(x) for x in stamps.read_text().split())
    return end - start


class Stopwatch:
    """Time spent in external commands, SQL and umount2, by thin wrappers.

    ivle-maint runs in this process; the wrappers time the calls that
    leave it (system.run, pg_dump, psycopg2's connect and execute) without
    a profiler's overhead on ivle-maint's own code.  The umount2 system
    calls are the kernel's work on the jails, which the by-hand umount(8)
    does too; they are counted apart, as "kernel", like SQL is; so is the
    time spent waiting for signalled consoles to exit ("waits").
    """

    def __init__(self) -> None:
        self.external = 0.0
        self.sql = 0.0
        self.kernel = 0.0
        self.waits = 0.0
        # Steps that overlap (and user jail batches) make calls in several
        # threads at once: the buckets sum each call, `outside` counts the
        # wall time while at least one call of any bucket is under way.
        self.outside = 0.0
        self._in_flight = 0
        self._since = 0.0
        self._lock = threading.Lock()
        self.own_by_step: dict[str, float] = {}

    def _enter(self) -> None:
        with self._lock:
            if not self._in_flight:
                self._since = time.perf_counter()
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if not self._in_flight:
                self.outside += time.perf_counter() - self._since

    def timed(self, func: Any, bucket: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self._enter()
            try:
                return func(*args, **kwargs)
            finally:
                self._leave()
                with self._lock:
                    setattr(self, bucket, getattr(self, bucket) + time.perf_counter() - started)
        return wrapper

    def cursor_class(self) -> type:
        import psycopg2.extensions

        watch = self

        class TimedCursor(psycopg2.extensions.cursor):
            def execute(self, query: Any, vars: Any = None) -> Any:
                started = time.perf_counter()
                watch._enter()
                try:
                    return super().execute(query, vars)
                finally:
                    watch._leave()
                    with watch._lock:
                        watch.sql += time.perf_counter() - started

        return TimedCursor

    @contextmanager
    def installed(self) -> Iterator[None]:
        import psycopg2

        from ivle_maint import system
        from ivle_maint.db import backup
        from ivle_maint.gates import processes
        from ivle_maint.jails import mounts

        saved = (system.run, backup.dump, psycopg2.connect, mounts._umount2, processes._wait)
        connect = self.timed(psycopg2.connect, "sql")
        cursor = self.cursor_class()
        system.run = self.timed(system.run, "external")  # type: ignore[assignment]
        backup.dump = self.timed(backup.dump, "external")  # type: ignore[assignment]
        mounts._umount2 = self.timed(mounts._umount2, "kernel")
        # The wait for signalled consoles to end (gates/processes.empty_jails).
        processes._wait = self.timed(processes._wait, "waits")
        psycopg2.connect = lambda *a, **kw: connect(*a, cursor_factory=cursor, **kw)
        try:
            yield
        finally:
            (system.run, backup.dump, psycopg2.connect, mounts._umount2,  # type: ignore
             processes._wait) = saved


def ivle_maint_window(node: Node) -> tuple[float, Stopwatch]:
    """The web-down window of `ivle-maint upgrade` and where its time went."""
    from ivle_maint import procedure
    from ivle_maint.cli import main
    from ivle_maint.journal import Journal
    from ivle_maint.summary import web_down_seconds

    watch, inside = Stopwatch(), Stopwatch()
    original = procedure.Procedure._run_step
    original_group = procedure.Procedure._run_group

    def counted(name: str, run: Any) -> None:
        # The web server is down from stop-web to start-web: count only the
        # time of calls made by those steps.
        before = (watch.external, watch.sql, watch.kernel, watch.waits, watch.outside)
        started = time.perf_counter()
        try:
            run()
        finally:
            spent = (watch.external - before[0], watch.sql - before[1],
                     watch.kernel - before[2], watch.waits - before[3])
            inside.external += spent[0]
            inside.sql += spent[1]
            inside.kernel += spent[2]
            inside.waits += spent[3]
            outside = watch.outside - before[4]
            inside.outside += outside
            inside.own_by_step[name] = time.perf_counter() - started - outside

    def step_counted(self: procedure.Procedure, step: procedure.Step) -> None:
        counted(step.name, lambda: original(self, step))

    def group_counted(self: procedure.Procedure, group: list[procedure.Step]) -> None:
        counted("+".join(s.name for s in group), lambda: original_group(self, group))

    os.environ.update(node.env)
    procedure.Procedure._run_step = step_counted  # type: ignore[method-assign]
    procedure.Procedure._run_group = group_counted  # type: ignore[method-assign]
    try:
        with watch.installed():
            status = main(["upgrade", "--from", "1.0", "--to", "1.1"])
    finally:
        procedure.Procedure._run_step = original  # type: ignore[method-assign]
        procedure.Procedure._run_group = original_group  # type: ignore[method-assign]
    if status != 0:
        raise SystemExit(f"ivle-maint upgrade exited {status}")
    journal = Journal.load(Journal.file_for(node.state_dir, "1.0", "1.1"))
    window = web_down_seconds(journal, procedure.STEPS)
    assert window is not None
    slowest = sorted(inside.own_by_step.items(), key=lambda kv: -kv[1])[:4]
    print("own time by step: " + ", ".join(f"{k} {v * 1000:.0f}ms" for k, v in slowest))
    return window, inside


def main() -> int:
    args, root = bench.begin(__doc__, "ivle-bench-", private_mounts=True, users=500,
                             migrations=20)
    new = sorted(many(args.migrations))
    with ThrowawayPostgres(root / "pg") as pg:
        schema.ensure_template(pg)
        hand_node = make_node(root / "by-hand", pg, args.users, args.migrations)
        maint_node = make_node(root / "maint", pg, args.users, args.migrations)
        try:
            by_hand = by_hand_window(hand_node, new)
            window, spent = ivle_maint_window(maint_node)
        finally:
            hand_node.teardown()
            maint_node.teardown()
    own = window - spent.outside  # calls in several threads at once count once
    ratio = window / by_hand
    print(f"{args.users} users, {args.migrations} migrations, stand-ins with fixed work")
    print(f"IVLE's procedure by hand: web down {by_hand:.2f}s")
    print(f"ivle-maint upgrade:          web down {window:.2f}s (external commands "
          f"{spent.external:.2f}s, SQL {spent.sql:.2f}s, umount2 {spent.kernel:.3f}s, "
          f"exit waits {spent.waits:.3f}s, each summed over threads; own {own:.3f}s)")
    verdict = "PASS" if ratio <= 1 else "FAIL"
    print(f"ratio ivle-maint/by hand: {ratio:.2f} (target <= 1.0: {verdict})")
    share = own / window
    print(f"ivle-maint's own share of its window: {share:.1%} "
          f"(target < 2%: {'PASS' if share < 0.02 else 'FAIL'})")
    return 0 if ratio <= 1 and share < 0.02 else 1


if __name__ == "__main__":
    bench.run(main)

#!/usr/bin/python3
"""Benchmark: `ivle-maint db classify --all` over 300 migrations, against 1 second.

Writes 300 IVLE-shaped migrations (own BEGIN/COMMIT or none, `$$` function
bodies, tables, indexes, constraints, drops, updates: every class) into a
throwaway directory, runs `ivle-maint db classify --all` on them as a whole
process (interpreter start-up, pglast's import and parser included), takes
the median of a few runs, and prints its ratio to the 1-second budget (at
most 1.0 passes; exit 1 otherwise).  Run as root, from the source tree.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 1.0
ROOT = Path(__file__).resolve().parent.parent

BODIES = [
    "CREATE TABLE t{n} (id serial PRIMARY KEY, login text NOT NULL REFERENCES login (login),\n"
    "    created timestamptz NOT NULL DEFAULT now());\nCREATE INDEX t{n}_login ON t{n} (login);\n",
    "ALTER TABLE offering ADD COLUMN c{n} integer DEFAULT 0;\n"
    "COMMENT ON COLUMN offering.c{n} IS E'added by {n}\\n';\n",
    "CREATE UNIQUE INDEX u{n} ON login (unixid);\n",
    "ALTER TABLE login ADD CONSTRAINT k{n} CHECK (unixid > 0) NOT VALID;\n"
    "ALTER TABLE login VALIDATE CONSTRAINT k{n};\n",
    "CREATE OR REPLACE FUNCTION f{n}() RETURNS trigger AS $$\nBEGIN\n"
    "    NEW.state := 'enabled';\n    RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n",
    "UPDATE login SET state = 'disabled' WHERE state = 'no_agreement';\n"
    "ALTER TABLE login DROP COLUMN c{n};\n",
    "ALTER TABLE project RENAME COLUMN deadline{n} TO due{n};\n",
    "GRANT SELECT ON login TO ivle_user;\nALTER TABLE login ALTER COLUMN state SET NOT NULL;\n",
]


def write_migrations(directory: Path, count: int) -> None:
    for n in range(count):
        day, serial = divmod(n, 90)
        body = BODIES[n % len(BODIES)].format(n=n)
        text = f"BEGIN;\n{body}COMMIT;\n" if n % 2 else body
        (directory / f"2010{day + 1:02d}01-{serial + 1:02d}.sql").write_text(text)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1) or not done.stdout.startswith("2010"):
        sys.exit(f"bench_classify: {' '.join(argv)} failed: {done.stderr.strip()}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--migrations", type=int, default=300, help="how many (300)")
    parser.add_argument("--runs", type=int, default=5, help="runs to take the median of (5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "migrations"
        directory.mkdir(mode=0o755)
        write_migrations(directory, args.migrations)
        conf = Path(tmp) / "ivle-maint.conf"
        conf.write_text("")
        argv = [sys.executable, "-m", "ivle_maint", "--config", str(conf), "db", "classify",
                "--all", "--migrations", str(directory)]
        times = [timed(argv) for _ in range(args.runs)]
    median = statistics.median(times)
    ratio = median / BUDGET_S
    print(f"ivle-maint db classify --all, {args.migrations} migrations: median "
          f"{median * 1000:.0f} ms over {args.runs} runs")
    print(f"ratio to the 1 s budget: {ratio:.2f} ({'PASS' if ratio <= 1.0 else 'FAIL'})")
    return 0 if ratio <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

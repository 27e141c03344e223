#!/usr/bin/python3
"""Benchmark: `ivle-maint --version` as installed, against its 150 ms target.

Installs ivle-maint into a throwaway venv (console script, like pip or
Debian would), runs `ivle-maint --version` and a bare `python3 -c pass`
alternately in one run, and prints the median of each and the ratio of
ivle-maint's median to the 150 ms target (at most 1.0 passes).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.150
RUNS = 30
ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
        subprocess.run(
            [venv / "bin/pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)],
            check=True,
        )
        script = str(venv / "bin/ivle-maint")
        ours, bare = [], []
        for _ in range(RUNS):
            ours.append(timed([script, "--version"]))
            bare.append(timed([sys.executable, "-c", "pass"]))
    median, base = statistics.median(ours), statistics.median(bare)
    ratio = median / TARGET_S
    print(f"ivle-maint --version: median {median * 1000:.1f} ms over {RUNS} runs")
    print(f"python3 -c pass:      median {base * 1000:.1f} ms (interpreter start-up)")
    print(f"ratio to the 150 ms target: {ratio:.2f} ({'PASS' if ratio <= 1.0 else 'FAIL'})")
    return 0 if ratio <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

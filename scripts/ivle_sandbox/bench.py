"""What the benchmark scripts (scripts/bench_*.py) share: how main() opens
(command line, root, a fresh sandbox root), `ivle-maint` run on a node as
a process of its own, as an administrator runs it, and the closing line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ivle_sandbox import mountns
from ivle_sandbox.cluster import env_of
from ivle_sandbox.node import Node
from ivle_sandbox.postgres import make_sandbox_root


def begin(doc: str, prefix: str, *, private_mounts: bool = False,
          **counts: int) -> tuple[argparse.Namespace, Path]:
    """Parse the script's options (one `--NAME N` per COUNTS item, N
    defaulting to its value), refuse anyone but root, and make the sandbox
    root (checked to be in a private mount namespace if PRIVATE_MOUNTS)."""
    summary = doc.split("\n\n", 1)[0]  # the first paragraph, on one line
    parser = argparse.ArgumentParser(description=" ".join(summary.split()))
    for name, default in counts.items():
        parser.add_argument(f"--{name}", type=int, default=default,
                            help=f"(default {default})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (make bench)")
    root = make_sandbox_root(prefix)
    if private_mounts:
        mountns.require_private(root)
    return args, root


def ivle_maint_argv(*args: str) -> list[str]:
    """`ivle-maint ARGS` from this checkout (with env_of(node) as its environment)."""
    return [sys.executable, "-m", "ivle_maint", *args]


def ivle_maint(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """`ivle-maint ARGS` on NODE, its output captured."""
    return subprocess.run(ivle_maint_argv(*args), env=env_of(node), check=False,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def ivle_maint_ok(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """`ivle-maint ARGS` on NODE; the benchmark stops if it fails."""
    done = ivle_maint(node, *args)
    if done.returncode != 0:
        raise SystemExit(f"ivle-maint {' '.join(args)} exited {done.returncode}: "
                         f"{(done.stderr or done.stdout).strip()}")
    return done


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with MAIN's status after saying how long the benchmark took."""
    started = time.monotonic()
    code = main()
    print(f"benchmark took {time.monotonic() - started:.0f}s")
    sys.exit(code)

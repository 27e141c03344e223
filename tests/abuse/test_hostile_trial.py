"""Cases of the second hostile trial (issue: safety) not covered elsewhere:
a reader of stdout that goes away early, grandchildren of a killed run,
hostile bytes in mount names, umask 000 for dumps, a rerun beside a rerun.

Each case: a one-line message at most, the documented exit status,
nothing lost, and the next command ends as an uninterrupted run ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from ivle_sandbox.releases import NEW, OLD
from upgrade_helpers import (
    REPO,
    cli,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

FAILING = {**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"}


def run_with_stdout_closed(node: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`ivle-maint ARGS | head -0`: the reader is gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {**os.environ, **node.env, "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, "-m", "ivle_maint", *args], env=env,
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [("status",), ("mounts", "list"), ("db", "status"),
                                  ("settings", "--spec"), ("plan", "--to", "1.1")])
def test_a_reader_gone_early_changes_nothing_but_the_output(node: Any,
                                                            args: tuple[str, ...]) -> None:
    """`ivle-maint status | head -1`: no error line, no traceback, same status."""
    normal = cli(node, *args)
    closed = run_with_stdout_closed(node, *args)
    assert closed.returncode == normal.returncode, closed.stderr
    assert closed.stderr == normal.stderr

"""One ivle-maint at a time: a second runner is refused, naming the holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ivle_maint.errors import LockedError
from ivle_maint.lock import node_lock

HOLDER = """
import sys, time
from pathlib import Path
from ivle_maint.lock import node_lock
with node_lock(Path(sys.argv[1]), "upgrade 1.0 -> 1.1"):
    print("held", flush=True)
    time.sleep(60)
"""


def start_holder(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_runner_is_refused_with_the_holder_named(tmp_path):
    proc = start_holder(tmp_path)
    try:
        with pytest.raises(LockedError) as caught, node_lock(tmp_path, "second"):
            pass
        assert f"pid {proc.pid}: upgrade 1.0 -> 1.1" in str(caught.value)
        assert caught.value.exit_status == 75
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_holder_is_free_again(tmp_path):
    proc = start_holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    with node_lock(tmp_path, "after the kill"):
        assert time.monotonic() < deadline
        assert "after the kill" in (tmp_path / "lock").read_text()

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


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    """Each run truncates the lock: through a symlink that would clobber any file."""
    from ivle_maint.errors import MaintError

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    (run_dir / "lock").symlink_to(victim)
    with pytest.raises(MaintError, match="is a symlink; refused"), node_lock(run_dir, "test"):
        pass
    assert victim.read_text() == "precious\n"


def test_a_run_directory_others_can_write_is_refused(tmp_path):
    from ivle_maint.errors import ConfigError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o777)
    with pytest.raises(ConfigError, match=r"writable by others \(mode 0777\)"), \
            node_lock(run_dir, "test"):
        pass
    assert not (run_dir / "lock").exists()


def test_the_run_directory_is_created_0755_under_umask_000(tmp_path):
    old = os.umask(0)
    try:
        with node_lock(tmp_path / "a" / "run", "test"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "run").stat().st_mode & 0o777 == 0o755


ROLLBACK_HOLDER = """
import sys, time
from pathlib import Path
from ivle_maint.lock import rollback_lock
with rollback_lock(Path(sys.argv[1]), "rollback 1.1 -> 1.0") as env:
    print(env["IVLE_MAINT_ROLLBACK_PID"], flush=True)
    time.sleep(60)
"""


def test_a_rollback_refuses_the_node_lock_to_all_but_its_own_hooks(tmp_path, monkeypatch):
    from ivle_maint.lock import ROLLBACK_ENV, rollback_lock

    proc = subprocess.Popen(
        [sys.executable, "-c", ROLLBACK_HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == str(proc.pid)
        with pytest.raises(LockedError) as again, rollback_lock(tmp_path, "second"):
            pass
        assert str(again.value).startswith(
            f"a rollback is already under way on this node (pid {proc.pid}: rollback 1.1 -> 1.0")
        monkeypatch.delenv(ROLLBACK_ENV, raising=False)
        with pytest.raises(LockedError) as other, node_lock(tmp_path, "rerun"):
            pass
        assert str(other.value).startswith(
            f"a rollback is under way on this node (pid {proc.pid}: rollback 1.1 -> 1.0")
        assert other.value.exit_status == 75
        assert (tmp_path / "lock").read_text() == ""  # let go at once
        monkeypatch.setenv(ROLLBACK_ENV, str(proc.pid))  # a hook of its dpkg
        with node_lock(tmp_path, "hook preinst"):
            assert "hook preinst" in (tmp_path / "lock").read_text()
    finally:
        proc.kill()
        proc.wait()
    monkeypatch.delenv(ROLLBACK_ENV)
    # Free again; and a rollback takes the node lock beside its own.
    with rollback_lock(tmp_path, "mine"), node_lock(tmp_path, "mine too"):
        pass

"""One ivle-maint at a time: a second runner is refused, naming the holder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- what is found at a lock's name: nothing there lets another user in ------

NOBODY = 65534
# A process of another user: told a path, it opens it and holds a shared
# flock on it (enough to refuse every LOCK_EX), or says why it could not.
PROBE = """
import fcntl, os, sys
held = None
for line in sys.stdin:
    if held is not None:
        os.close(held)
        held = None
    try:
        held = os.open(line.rstrip("\\n"), os.O_RDONLY | os.O_NONBLOCK)
        fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
        print("held", flush=True)
    except OSError as exc:
        print("refused", exc.errno, flush=True)
"""


@pytest.fixture(scope="module")
def open_to_nobody():
    """A run directory's parent that nobody can enter (not under 0700 tmp_path)."""
    import shutil
    import tempfile

    base = tempfile.mkdtemp(prefix="ivle-maint-lock-test-", dir="/var/tmp")
    os.chmod(base, 0o755)
    probe = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)

    def try_to_hold(path) -> bool:
        assert probe.stdin is not None and probe.stdout is not None
        probe.stdin.write(f"{path}\n")
        probe.stdin.flush()
        return probe.stdout.readline().startswith("held")

    yield base, try_to_hold
    probe.kill()
    probe.wait()
    shutil.rmtree(base)


def _plant(path, kind: str, mode: int, uid: int, victim) -> None:
    if kind == "regular":
        path.write_bytes(b"pid 1: an older run\n")
        os.chown(path, uid, uid)
        os.chmod(path, mode)
    elif kind == "hard link":
        os.link(victim, path)
    elif kind == "symlink":
        path.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(path, mode)
    elif kind == "directory":
        path.mkdir(mode=mode)


@settings(max_examples=80, deadline=None)
@given(which=st.sampled_from(["lock", "rollback.lock"]),
       kind=st.sampled_from(["absent", "regular", "hard link", "symlink", "fifo", "directory"]),
       mode=st.integers(0, 0o7777), uid=st.sampled_from([0, NOBODY]), umask=st.integers(0, 0o777))
def test_no_lock_another_user_can_hold_whatever_is_found_at_its_name(
        open_to_nobody, *, which, kind, mode, uid, umask):
    """Any user who can open a lock can flock it and so refuse every run (an
    upgrade under dpkg too); a lock that is a second name of another file
    (a hard link) would be truncated.  Whatever is found at the lock's name,
    under any umask: ivle-maint refuses it in one line, leaving it and what
    it names as they were, or takes it and no other user can then hold it."""
    import shutil
    import tempfile

    from ivle_maint.errors import MaintError
    from ivle_maint.lock import rollback_lock

    base, try_to_hold = open_to_nobody
    top = tempfile.mkdtemp(dir=base)
    os.chmod(top, 0o755)
    try:
        run_dir, victim = os.path.join(top, "run"), os.path.join(top, "victim")
        os.mkdir(run_dir, 0o755)
        Path(victim).write_text("root:precious\n")
        path = Path(run_dir) / which
        _plant(path, kind, mode, uid, victim)
        before = os.lstat(path) if kind != "absent" else None
        take = node_lock if which == "lock" else rollback_lock
        old = os.umask(umask)
        try:
            with take(Path(run_dir), "upgrade"):
                pass
            taken = True
        except MaintError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            taken = False
        finally:
            os.umask(old)
        assert Path(victim).read_text() == "root:precious\n"
        if not taken:
            assert before is not None
            after = os.lstat(path)
            assert (after.st_ino, after.st_mode, after.st_uid) == \
                (before.st_ino, before.st_mode, before.st_uid)
            return
        assert kind == "absent" or (kind == "regular" and uid == 0)
        assert not try_to_hold(path)
        st_ = os.lstat(path)
        assert (st_.st_uid, st_.st_mode & 0o7777, st_.st_nlink) == (0, 0o600, 1)
        with take(Path(run_dir), "upgrade"):  # nobody holds it, then
            pass
    finally:
        try_to_hold("/nonexistent")  # let go of anything held
        shutil.rmtree(top)


@pytest.mark.parametrize("which", ["lock", "rollback.lock"])
def test_a_lock_another_user_opened_under_an_earlier_version_names_that_process(
        open_to_nobody, which):
    """An earlier version left the lock 0644: a process of another user that
    opened it then keeps its descriptor and can hold the lock for ever.
    The refusal names that process and its owner, from the kernel's lock
    table, not the lock's content (which the last ivle-maint emptied)."""
    import shutil
    import tempfile

    from ivle_maint.lock import rollback_lock

    base, try_to_hold = open_to_nobody
    run_dir = Path(tempfile.mkdtemp(dir=base))
    run_dir.chmod(0o755)
    try:
        (run_dir / which).write_bytes(b"")
        (run_dir / which).chmod(0o644)  # as earlier versions made it
        assert try_to_hold(run_dir / which)
        take = node_lock if which == "lock" else rollback_lock
        with pytest.raises(LockedError) as refused, take(run_dir, "upgrade"):
            pass
        line = str(refused.value)
        named = re.search(rf"pid (\d+), a process of uid {NOBODY}, not an ivle-maint", line)
        assert named and "\n" not in line, line
        assert Path(f"/proc/{named[1]}").stat().st_uid == NOBODY  # the probe, alive
    finally:
        try_to_hold("/nonexistent")
        shutil.rmtree(run_dir)

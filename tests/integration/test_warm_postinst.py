"""The warm postinst (ivle_maint/warm.py): a real worker process loads the
after-phase and runs a handed-over `hook postinst` exactly as the postinst's
own process would (the same output on the same streams, the same exit
status), once; whatever it must not run falls back to the cold start with
nothing run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivle_maint import warm

REPO = Path(__file__).resolve().parents[2]
NOT_TAKEN = 99  # the client's exit status when no worker took the command
CLIENT = ("import sys; from pathlib import Path; from ivle_maint import warm; "
          "r = warm.hand_over(sys.argv[2:], Path(sys.argv[1])); "
          f"sys.exit({NOT_TAKEN} if r is None else r)")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the worker's directory is root's")


def postinst_env(tmp_path: Path) -> dict[str, str]:
    """What dpkg's postinst of ivle would have, on a node without settings."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
            "LANG": "C.UTF-8", "DPKG_MAINTSCRIPT_NAME": "postinst",
            "DPKG_MAINTSCRIPT_PACKAGE": "ivle",
            "IVLE_MAINT_CONF": str(tmp_path / "missing" / "ivle-maint.conf")}


@pytest.fixture
def directory() -> Iterator[Path]:
    # Short: a socket's path has 108 bytes at most (the tests' own $TMPDIR is long).
    run = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    yield run
    shutil.rmtree(run, ignore_errors=True)


def start_worker(directory: Path, seconds: float = 60) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "ivle_maint.warm_worker", str(directory), str(seconds)],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(directory.glob("postinst-*.sock")):
        assert worker.poll() is None, "the worker ended before it listened"
        assert time.monotonic() < deadline, "the worker never listened"
        time.sleep(0.05)
    return worker


def client(directory: Path, env: dict[str, str], *argv: str,
           user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLIENT, str(directory), *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False,
                          user=user)


def cold(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivle_maint", *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("argv", [
    ("hook", "postinst", "configure", "1.0"),     # settings missing: its one-line error
    ("hook", "postinst", "frobnicate"),           # dpkg's call unknown: exit 2
    ("hook", "postinst", "--help"),               # argparse's own exit
])
def test_a_handed_over_postinst_says_and_exits_as_its_own_process(directory, tmp_path, argv):
    env = postinst_env(tmp_path)
    worker = start_worker(directory)
    try:
        warm_run = client(directory, env, *argv)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    cold_run = cold(env, *argv)
    assert warm_run.returncode != NOT_TAKEN, warm_run.stderr
    assert (warm_run.returncode, warm_run.stdout, warm_run.stderr) == \
        (cold_run.returncode, cold_run.stdout, cold_run.stderr)
    assert not any(directory.iterdir())  # served once: its socket is gone
    assert client(directory, env, *argv).returncode == NOT_TAKEN  # the next starts cold


def test_what_it_must_not_run_is_refused_with_nothing_run(directory, tmp_path):
    env = postinst_env(tmp_path)
    worker = start_worker(directory)
    try:
        # Not a postinst; not root (the directory keeps it out): each refused,
        # the worker still waiting for the postinst.
        assert client(directory, env, "settings", "--spec").returncode == NOT_TAKEN
        assert client(directory, env, "hook", "postinst", "frobnicate",
                      user=65534).returncode == NOT_TAKEN
        assert worker.poll() is None
        taken = client(directory, env, "hook", "postinst", "frobnicate")
        assert taken.returncode == 2 and "frobnicate" in taken.stderr
        assert worker.wait(timeout=60) == 2
    finally:
        worker.kill()


def test_a_worker_nobody_asks_leaves_in_its_time(directory):
    worker = start_worker(directory, seconds=1)
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
    assert not any(directory.iterdir())


def test_a_directory_others_may_enter_is_not_used(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert not warm.own_directory(shared, create=False)
    assert warm.hand_over(["hook", "postinst", "configure", "1.0"], shared) is None
    # Closed itself, but in a directory others may write (the gate's walk),
    # or reached through a symlink: not used either, nor made there.
    shared.chmod(0o777)
    inner = shared / "run"
    inner.mkdir(mode=0o700)
    assert not warm.own_directory(inner, create=False)
    assert not warm.own_directory(shared / "new", create=True)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    assert warm.own_directory(closed, create=False)
    (tmp_path / "link").symlink_to(closed)
    assert not warm.own_directory(tmp_path / "link", create=False)

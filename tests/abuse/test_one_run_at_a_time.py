"""One ivle-maint at a time on a node: a second run beside a running one
exits 75 in one line naming what holds the node lock, and the first ends
as an uninterrupted run does.  (The migration lock of a killed runner:
test_nothing_runs_beside_the_rerun.py; a live holder in another PID
namespace or on another machine: test_cluster_safety.py; a symlink in
place of the lock file: test_files_read_and_run.py.)  A rollback holds
the rollback lock from start to end: a second rollback, or any other
ivle-maint, exits 75 at once, while the hooks of the dpkg it runs take the
node lock (no deadlock).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_maint.config import load_settings
from ivle_maint.rollback import point as points
from ivle_sandbox import mountns
from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import reference_state
from support.upgrade_helpers import (
    at_version_1_0,
    final_state,
    postinst,
    preinst,
    start_cli,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def reference(node_factory: Any) -> dict[str, Any]:
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves (one per worker)."""
    return reference_state(node_factory, users=3, consoles=1)


def test_two_reruns_at_once_one_finishes_the_other_exits_75(node_factory: Any,
                                                             reference: dict[str, Any]) -> None:
    node = at_version_1_0(node_factory(users=3, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node, migrations={**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"})
    assert postinst(node).returncode == 1
    unpack(node)  # the corrected package
    node.set_fakes("ivle-buildjail", delay=3)  # the first holds the node lock a while
    first, second = start_cli(node, "rerun"), start_cli(node, "rerun")
    errs = [p.communicate(timeout=300)[1] for p in (first, second)]
    outcomes = sorted(zip((first.returncode, second.returncode), errs, strict=True))
    (ok, ok_err), (busy, busy_err) = outcomes
    assert (ok, busy) == (0, 75), (ok_err, busy_err)
    assert busy_err.startswith("ivle-maint: error: another ivle-maint holds ")
    assert "upgrade 1.0 -> 1.1" in busy_err and len(busy_err.splitlines()) == 1
    assert final_state(node) == reference


REPO = Path(__file__).resolve().parents[2]
FAKES = Path("/usr/local/sbin")  # first on the PATH ivle-maint gives a child

# In dpkg's place: its "maintainer script" runs ivle-maint under the node
# lock, in the environment the rollback passed on, then waits to be let go.
APT_GET = """\
#!/usr/bin/python3
import os, subprocess, sys, time
work = {work!r}
done = subprocess.run([sys.executable, "-m", "ivle_maint", "media", "set", "1.0"],
                      env={{**os.environ, "PYTHONPATH": {repo!r}}}, capture_output=True, text=True)
print(f"hook exit {{done.returncode}}: {{done.stderr.strip()}}", flush=True)
open(os.path.join(work, "installed"), "w").write("1.0")
open(os.path.join(work, "ready"), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(work, "go")) and time.monotonic() < deadline:
    time.sleep(0.05)
"""
DPKG_QUERY = """\
#!/usr/bin/python3
print(open({installed!r}).read(), end="")
"""


@pytest.fixture
def fake_apt(tmp_path: Path) -> Iterator[Path]:
    """apt-get and dpkg-query stand-ins where ivle-maint looks first (a
    tmpfs over /usr/local/sbin, in this run's private mount namespace)."""
    mountns.require_private(FAKES)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(FAKES)],
                   check=True)
    try:
        (tmp_path / "installed").write_text("1.1")
        for name, text in (("apt-get", APT_GET.format(work=str(tmp_path), repo=str(REPO))),
                           ("dpkg-query", DPKG_QUERY.format(
                               installed=str(tmp_path / "installed")))):
            (FAKES / name).write_text(text)
            (FAKES / name).chmod(0o755)
        yield tmp_path
    finally:
        subprocess.run(["umount", str(FAKES)], check=True)


def rollback_node(work: Path) -> dict[str, str]:
    """A slave at 1.1 with its upgrade's restore point (no package kept:
    the rollback runs apt-get); the environment that runs ivle-maint on it."""
    (work / "etc").mkdir()
    (work / "etc" / "ivle.conf").write_text("[media]\nversion = 1.1\n")
    conf = work / "maint.conf"
    conf.write_text(textwrap.dedent(f"""\
        [node]
        role = slave
        [cluster]
        coordinate = never
        [paths]
        ivle_conf_dir = {work / 'etc'}
        state = {work / 'state'}
        log = {work / 'log'}
        backup = {work / 'backup'}
        run = {work / 'run'}
        """))
    point = points.open_point(load_settings(str(conf)), "1.0->1.1@ab", "1.0", "1.1")
    point.update(lambda p: setattr(p, "package_name", "ivle"))
    return {**os.environ, "IVLE_MAINT_CONF": str(conf), "PYTHONPATH": str(REPO)}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivle_maint", *args], env=env, check=False,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


def test_a_second_rollback_is_refused_at_once_and_the_first_ones_hooks_run(
        fake_apt: Path) -> None:
    env = rollback_node(fake_apt)
    first = subprocess.Popen([sys.executable, "-m", "ivle_maint", "rollback"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (fake_apt / "ready").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first rollback never ran apt-get"
            time.sleep(0.05)
        # The first is inside apt-get: its hook took the node lock and let it go.
        started = time.monotonic()
        second = run_cli(env, "rollback")
        assert time.monotonic() - started < 10  # at once, not after dpkg's lock
        assert second.returncode == 75, second.stderr
        assert second.stderr.startswith("ivle-maint: error: a rollback is already under "
                                        f"way on this node (pid {first.pid}: rollback 1.1 -> ")
        assert len(second.stderr.splitlines()) == 1
        # Any other ivle-maint (not the first rollback's hook) is refused too.
        other = run_cli(env, "media", "set", "1.0")
        assert other.returncode == 75, other.stderr
        assert other.stderr.startswith("ivle-maint: error: a rollback is under way on this "
                                       f"node (pid {first.pid}: rollback 1.1 -> ")
        assert len(other.stderr.splitlines()) == 1
        (fake_apt / "go").touch()
        _out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert "hook exit 0: " in err  # the hook got the node lock: no deadlock
    assert "rollback 1.1 -> 1.0 (restore point of 1.0->1.1@ab): done" in err
    # Both locks are free again.
    assert run_cli(env, "media", "set", "1.0").returncode == 0

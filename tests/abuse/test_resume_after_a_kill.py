"""Resuming after a kill: SIGKILL of ivle-maint at any step (inside a step
where it can be slowed), or of its server session mid-migration; then
`ivle-maint rerun`, and the command it names when the code is not in
place, end as one uninterrupted run ends.

Each case kills a real ivle-maint process on a sandbox node, then checks
the one-line message, the exit status, that nothing is lost and that the
next command ends where an uninterrupted run ends.  (What a killed run
leaves running: test_nothing_runs_beside_the_rerun.py; two runs at once:
test_one_run_at_a_time.py; a killed before-phase never followed by the
after-phase on the old code: test_schema_hold.py.)
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ivle_sandbox.releases import NEW, OLD, RELEASES
from support.abuse_helpers import (
    hold_migration_lock,
    kill_when,
    node_pids,
    old_site_untouched,
    reference_state,
    resume_line,
)
from support.source_tree import source_tree
from support.upgrade_helpers import (
    OLD_KEYS,
    at_version_1_0,
    cli,
    final_state,
    home_checksums,
    journal,
    marker_keys,
    media_version,
    preinst,
    set_setting,
    start_cli,
    unpack,
    wait_for_step,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def reference(node_factory: Any) -> dict[str, Any]:
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves (one per worker)."""
    return reference_state(node_factory, users=3, consoles=1)


# -- killed at each step -------------------------------------------------------

SOURCE_STEPS = ["stop-web", "stop-consoles", "unmount-jails", "baseline", "setup.py install",
                "migrate", "rebuild-jail", "remake-users", "restart-usrmgt", "media-version",
                "start-web"]


SLOW = {"stop-web": ("apache2", "delay"), "rebuild-jail": ("ivle-buildjail", "delay"),
        "remake-users": ("ivle-remakeuser", "delay"),
        "restart-usrmgt": ("ivle-usrmgt-server", "delay"), "start-web": ("apache2", "delay")}


def reached(node: Any, step: str) -> bool:
    if step == "setup.py install":
        return bool(node.installed_version() == "1.1")
    status = journal(node).get("steps", {}).get(step, {}).get("status")
    return status in ("running", "done")


@pytest.mark.parametrize("step", SOURCE_STEPS)
def test_source_upgrade_killed_at_each_step_then_rerun(node_factory: Any,
                                                       reference: dict[str, Any],
                                                       step: str) -> None:
    """SIGKILL as STEP starts (inside it where it can be slowed); `rerun`, and
    the command it names when the code is not in place, end as one run does."""
    node = at_version_1_0(node_factory(users=3, consoles=1))
    homes = home_checksums(node)
    tree = source_tree(node, RELEASES["1.1"])
    if step in SLOW:
        node.set_fakes(SLOW[step][0], **{SLOW[step][1]: 3})
    proc = start_cli(node, "upgrade", "--from", "1.0", "--source", str(tree))
    kill_when(proc, lambda: reached(node, step), timeout=120, poll=0.005)
    if step in SLOW:
        node.set_fakes(SLOW[step][0], **{SLOW[step][1]: 0})
    done = cli(node, "rerun")
    assert "Traceback" not in done.stderr
    if done.returncode == 1:  # the code is not in place: never the after-phase
        assert "1.1's code is not installed" in done.stderr, done.stderr
        assert marker_keys(node) in ([], OLD_KEYS) and media_version(node) == "1.0"
        command = resume_line(done.stderr).split("   ")[0]
        done = cli(node, *shlex.split(command)[1:])
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference
    assert home_checksums(node) == homes


def test_a_rerun_ends_the_grandchild_a_killed_run_left(node_factory: Any,
                                                       reference: dict[str, Any]) -> None:
    """ivle-buildjail's apt outlives it (no parent-death signal of its own)."""
    node = at_version_1_0(node_factory(users=3, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node)
    node.set_fakes("ivle-buildjail", apt_delay=120)
    apt = b"sleep\x00120.0\x00"
    proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")
    kill_when(proc, lambda: bool(node_pids(node, apt)), timeout=60, poll=0.02)
    time.sleep(0.5)  # ivle-buildjail gets its parent-death SIGKILL; apt does not
    assert len(node_pids(node, apt)) == 1
    node.set_fakes("ivle-buildjail", apt_delay=0)
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert "ivle-buildjail -u (process group" in done.stderr
    assert "left running by a killed ivle-maint" in done.stderr
    assert not node_pids(node, apt)  # ended before the step started again
    assert final_state(node) == reference


# -- killed while giving the site back -------------------------------------------

def initd_actions(node, service: str, action: str) -> list[int]:
    """Init-script runs of SERVICE ACTION for this node still alive."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if str(node.root).encode() in cmdline and \
                    cmdline.endswith(f"\0{service}\0{action}\0".encode()):
                found.append(int(entry.name))
    return found


def test_killed_abort_is_finished_by_the_rerun_never_completed(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    holder = hold_migration_lock(node)
    set_setting(node, "database", "lock_timeout", "3")
    try:
        proc = start_cli(node, "hook", "preinst", "upgrade", "1.0", "1.1")
        wait_for_step(node, "baseline", proc)
        node.set_fakes("apache2", delay=30)  # the undo (start-web) takes long
        deadline = time.monotonic() + 60
        while journal(node).get("state") != "aborting":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        holder.close()
    # The init script's start dies with ivle-maint: it cannot overlap the rerun's.
    deadline = time.monotonic() + 10
    while initd_actions(node, "apache2", "start"):
        assert time.monotonic() < deadline, "the init script outlived the killed ivle-maint"
        time.sleep(0.05)
    node.set_fakes("apache2", delay=0)
    assert journal(node)["steps"]["stop-web"]["status"] == "done"  # still owed
    starts = [e for _, _, e in node.service_events("apache2")].count("start")

    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert "upgrade 1.0 -> 1.1 abandoned, the site is back on 1.0" in done.stderr
    assert node.service_running("apache2") and journal(node)["state"] == "aborted"
    old_site_untouched(node)
    assert [e for _, _, e in node.service_events("apache2")].count("start") == starts + 1


# -- its server session ended mid-migration --------------------------------------

def test_server_session_ended_mid_migration_is_one_line_and_rerun_finishes(
        node_factory: Any, reference: dict[str, Any]) -> None:
    """PostgreSQL restarting (or an administrator's pg_terminate_backend)
    while a migration's statement runs: nothing of it applied, one line,
    the resume command; the rerun ends as one run does."""
    node = at_version_1_0(node_factory(users=3, consoles=1))
    assert preinst(node).returncode == 0
    slow = {**OLD, **NEW, "20100215.sql": "SELECT pg_sleep(60);\n" + NEW["20100215.sql"]}
    unpack(node, migrations=slow)
    proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")
    conn = node.connect()
    try:
        deadline = time.monotonic() + 60
        ended = False
        while not ended:
            assert time.monotonic() < deadline and proc.poll() is None
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "query LIKE 'SELECT pg_sleep(60)%%' AND pid <> pg_backend_pid()")
                ended = bool(cur.fetchall())
            conn.commit()
            time.sleep(0.02)
    finally:
        conn.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("ivle-maint: error: ")]
    assert len(errors) == 1 and "20100215" in errors[0], err
    assert "ivle-maint: resume with: dpkg --configure -a" in err
    assert marker_keys(node) == sorted(k.removesuffix(".sql") for k in {**OLD, **NEW})[:-1]
    unpack(node)
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference

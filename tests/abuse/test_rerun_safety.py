"""Reruns after SIGKILL, a fragile abort path, and children left running.

Every case kills or starves a real ivle-maint process on a sandbox node,
then checks the one-line message, the exit status, that nothing is lost
and that the next command ends where an uninterrupted run ends.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from abuse_helpers import (
    error_lines,
    kill_when,
    live_processes,
    resume_line,
    upgraded_state,
    wait_until_gone,
)
from ivle_maint.db.lock import LOCK_ID
from ivle_sandbox.releases import NEW, OLD
from upgrade_helpers import (
    ALL_KEYS,
    OLD_KEYS,
    at_version_1_0,
    cli,
    final_state,
    home_checksums,
    journal,
    marker_keys,
    media_version,
    postinst,
    preinst,
    set_setting,
    start_cli,
    stubborn_console,
    unpack,
    wait_for_step,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


def old_site_untouched(node) -> None:
    """Nothing of the after-phase ran: old schema, old media, old code."""
    assert marker_keys(node) in ([], OLD_KEYS)  # the baseline at most
    assert media_version(node) == "1.0"
    assert node.installed_version() == "1.0" and node.template_version() == "1.0"
    steps = journal(node).get("steps", {})
    assert not {"migrate", "rebuild-jail", "media-version", "start-web"} & set(steps)


@pytest.fixture
def reference(node_factory):
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves."""
    return upgraded_state(at_version_1_0(node_factory(users=4, consoles=1)))


# -- Defect 3: the abort path --------------------------------------------------

def hold_migration_lock(node):
    """Another runner holds the lock: the before-phase's baseline fails."""
    set_setting(node, "database", "lock_timeout", "1")
    holder = node.connect()
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [LOCK_ID])
    holder.commit()
    return holder


def test_hangup_does_not_stop_a_step(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    set_setting(node, "consoles", "term_timeout", "2")
    stubborn = stubborn_console(node)
    proc = start_cli(node, "hook", "preinst", "upgrade", "1.0", "1.1")
    wait_for_step(node, "stop-consoles", proc)
    proc.send_signal(signal.SIGHUP)  # the terminal closed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert journal(node)["steps"]["baseline"]["status"] == "done"
    assert stubborn.wait(timeout=10) == -signal.SIGKILL


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


# -- Defect 5: children die with ivle-maint, a rerun ends what a kill left ----

def tool_pids(node, name: str) -> list[int]:
    """Live processes running stand-in NAME for this node (by its IVLECONF)."""
    return [pid for pid, cmdline, environ in live_processes()
            if name.encode() in cmdline and str(node.conf_dir).encode() in environ]


@pytest.mark.parametrize("tool", ["ivle-buildjail", "ivle-remakeuser"])
def test_killed_run_leaves_no_tool_running(node_factory, reference, tool):
    node = at_version_1_0(node_factory(users=4, consoles=1))
    homes = home_checksums(node)
    assert preinst(node).returncode == 0
    unpack(node)
    node.set_fakes(tool, delay=60)
    step = "rebuild-jail" if tool == "ivle-buildjail" else "remake-users"
    proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")
    wait_for_step(node, step, proc)
    kill_when(proc, lambda: bool(tool_pids(node, tool)), timeout=30)
    # The kernel ends the tool with ivle-maint: nothing runs beside the rerun.
    wait_until_gone(lambda: tool_pids(node, tool), 10, f"{tool} outlived the killed ivle-maint")
    node.set_fakes(tool, delay=0)
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference
    assert home_checksums(node) == homes


def dump_pids(node) -> list[int]:
    """pg_dump processes dumping this node's database."""
    dbname = f"--dbname={node.dbname}\0".encode()
    return [pid for pid, cmdline, _ in live_processes()
            if b"pg_dump" in cmdline and dbname in cmdline]


def test_killed_run_leaves_no_pg_dump_writing(node_factory, reference):
    node = at_version_1_0(node_factory(users=4, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node)
    blocker = node.connect()
    with blocker.cursor() as cur:  # pg_dump waits for this table; ivle-maint never reads it
        cur.execute("LOCK TABLE enrolment IN ACCESS EXCLUSIVE MODE")
    try:
        proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")
        wait_for_step(node, "migrate", proc)
        kill_when(proc, lambda: bool(dump_pids(node)), timeout=60)
        wait_until_gone(lambda: dump_pids(node), 10, "pg_dump outlived the killed ivle-maint")
    finally:
        blocker.close()
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference


# -- Weak points: the upgrade's summary, a stale migration lock -----------------

def test_stale_lock_of_a_killed_runner_and_the_upgrade_summary(node_factory, reference):
    node = at_version_1_0(node_factory(users=4, consoles=1))
    assert preinst(node).returncode == 0
    slow = {**OLD, **NEW, "20100215.sql": "SELECT pg_sleep(60);\n" + NEW["20100215.sql"]}
    unpack(node, migrations=slow)
    proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")
    wait_for_step(node, "migrate", proc)
    conn = node.connect()
    try:
        deadline = time.monotonic() + 60
        backend = None
        while backend is None:
            assert time.monotonic() < deadline and proc.poll() is None
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE "
                            "'SELECT pg_sleep(60)%%' AND pid <> pg_backend_pid()")
                row = cur.fetchone()
            conn.rollback()
            backend = row[0] if row else None
            time.sleep(0.02)
    finally:
        conn.close()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert marker_keys(node) == ALL_KEYS[:-1]  # two of 1.1's three applied before the kill
    unpack(node)
    set_setting(node, "database", "lock_timeout", "1")

    waited = cli(node, "rerun")
    assert waited.returncode == 75, waited.stderr
    [error] = error_lines(waited)
    assert f"SELECT pg_terminate_backend({backend});" in error and "which is dead" in error
    assert resume_line(waited.stderr) == "ivle-maint rerun --terminate-stale-lock"

    done = cli(node, "rerun", "--terminate-stale-lock")
    assert done.returncode == 0, done.stderr
    assert f"ending server session {backend} of dead ivle-maint" in done.stderr
    # The summary is the upgrade's: all three of 1.1's migrations.
    new_keys = sorted(k.removesuffix(".sql") for k in NEW)
    assert f"migrations applied: 3 {' '.join(new_keys)}" in done.stderr
    assert final_state(node) == reference


# -- Resume hints --------------------------------------------------------------

def test_changed_applied_migration_prints_the_command_that_works(node_factory, reference):
    node = at_version_1_0(node_factory(users=4, consoles=1))
    assert preinst(node).returncode == 0
    first = sorted(OLD)[0]
    unpack(node, migrations={**OLD, **NEW, first: "-- corrected comment\n" + OLD[first]})
    failed = postinst(node)
    assert failed.returncode == 1
    key = first.removesuffix(".sql")
    resume = resume_line(failed.stderr)
    assert resume == f"ivle-maint rerun --accept-changed {key}, then: dpkg --configure -a"
    assert postinst(node).returncode == 1  # dpkg alone fails the same way
    rerun, configure = resume.split(", then: ")
    done = cli(node, *rerun.split()[1:])
    assert done.returncode == 0, done.stderr
    assert configure == "dpkg --configure -a" and "already complete" in postinst(node).stderr
    state = final_state(node)
    assert state == reference


def test_failed_preflight_leaves_nothing_for_a_rerun(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    done = preinst(node, old="1.1", new="1.0")  # a downgrade: refused by the preflight
    assert done.returncode == 1 and node.service_running("apache2")
    again = cli(node, "rerun")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert node.service_running("apache2") and len(node.console_pids()) == 1

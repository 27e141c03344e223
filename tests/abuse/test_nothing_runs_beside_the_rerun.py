"""Nothing a killed run started runs beside the next one: ivle-buildjail,
ivle-remakeuser and pg_dump die with ivle-maint (the kernel's parent-death
signal); what outlives them (apt in the jail, a grandchild) is ended by the
next `rerun` or `jails rebuild` before anything starts; the server session
of a runner killed mid-statement, which keeps the migration lock, is named
(`SELECT pg_terminate_backend(PID);`, exit 75) and ended by
`rerun --terminate-stale-lock`.

Each case kills a real ivle-maint on a sandbox node at the moment its child
runs, then checks that the child is gone and the rerun ends as one
uninterrupted run does.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import (
    error_lines,
    kill_when,
    live_processes,
    node_pids,
    reference_state,
    resume_line,
    wait_until_gone,
)
from support.upgrade_helpers import (
    ALL_KEYS,
    at_version_1_0,
    cli,
    final_state,
    home_checksums,
    marker_keys,
    preinst,
    set_setting,
    start_cli,
    unpack,
    wait_for_step,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def reference(node_factory):
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves (one per worker)."""
    return reference_state(node_factory, users=4, consoles=1)


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


@pytest.mark.parametrize("killed", ["upgrade", "jails rebuild"])
def test_jails_rebuild_ends_the_apt_a_killed_run_left(node_factory: Any, killed: str) -> None:
    """The command an administrator reaches for after a killed rebuild-jail
    ends the leftover first, as a rerun does; it never builds beside it."""
    node = at_version_1_0(node_factory(users=2, consoles=1))
    if killed == "upgrade":
        assert preinst(node).returncode == 0
        unpack(node)
        args: tuple[str, ...] = ("hook", "--package-version", "1.1", "postinst", "configure",
                                 "1.0")
    else:
        args = ("jails", "rebuild")
    node.set_fakes("ivle-buildjail", apt_delay=120)
    apt = b"sleep\x00120.0\x00"
    proc = start_cli(node, *args)
    kill_when(proc, lambda: bool(node_pids(node, apt)), timeout=60, poll=0.02)
    assert len(node_pids(node, apt)) == 1  # apt outlives its ivle-buildjail
    node.set_fakes("ivle-buildjail", apt_delay=0)
    done = cli(node, "jails", "rebuild")
    assert done.returncode == 0, done.stderr
    assert "left running by a killed ivle-maint" in done.stderr
    assert not node_pids(node, apt)


# -- the migration lock of a killed runner, and the upgrade's summary ----------------

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

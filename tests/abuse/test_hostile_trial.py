"""Cases of the second hostile trial (issue: safety) not covered elsewhere:
grandchildren of a killed run, umask 000 for dumps, a rerun beside a rerun
(a reader of stdout gone early: test_root_and_output.py; hostile bytes in
mount names: test_outside_text.py).

Each case: a one-line message at most, the documented exit status,
nothing lost, and the next command ends as an uninterrupted run ends.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
from test_preinst_manifest import manifest, preinst_with
from test_source_install import source_tree

from abuse_helpers import kill_when, live_processes, resume_line, upgraded_state
from ivle_maint.db import pgparse
from ivle_sandbox.releases import NEW, OLD, RELEASES
from upgrade_helpers import (
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
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def reference(node_factory: Any) -> dict[str, Any]:
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves."""
    return upgraded_state(at_version_1_0(node_factory(users=3, consoles=1)))


def node_pids(node: Any, argv: bytes) -> list[int]:
    """Live processes of this node (by its IVLECONF) whose argv is ARGV."""
    ours = f"IVLECONF={node.conf_dir}\0".encode()
    return [pid for pid, cmdline, environ in live_processes()
            if cmdline == argv and ours in environ]


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


SOURCE_STEPS = ["stop-web", "stop-consoles", "unmount-jails", "baseline", "setup.py install",
                "migrate", "rebuild-jail", "remake-users", "media-version", "restart-usrmgt",
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


MANIFEST_BROKEN = {
    "syntax error": ({"20100216-01.sql": "BEGIN;\nALTER TABLE login ADD x int;\nSELEC 1;\n"
                                         "COMMIT;\n"},
                     "ivle 1.1's migration 20100216-01.sql: line 3: syntax error at or near "
                     '"SELEC"'),
    "empty": ({"20100216-01.sql": "-- nothing yet\n"},
              "ivle 1.1's migration 20100216-01.sql: holds no SQL statement"),
    "BEGIN without COMMIT": ({"20100216-01.sql": "BEGIN;\nCREATE TABLE t (x int);\n"},
                             "ivle 1.1's migration 20100216-01.sql: line 1: BEGIN without a "
                             "matching COMMIT"),
    "bad name": ({"2010-02-16.sql": "SELECT 1;\n"},
                 "ivle 1.1's migration 2010-02-16.sql: not a migration file name"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MANIFEST_BROKEN))
def test_the_preinst_names_a_broken_new_migration_as_the_package_ships_it(
        node_factory: Any, case: str) -> None:
    """Checked from dh_ivle_maint's manifest: the error names the package's
    file, not the temporary copy that is gone when the message is read."""
    if case == "syntax error" and not pgparse.available():
        pytest.skip("needs pglast (PostgreSQL's parser): python3-pglast")
    node = at_version_1_0(node_factory(users=2, consoles=1))
    files, expected = MANIFEST_BROKEN[case]
    done = preinst_with(node, manifest({**OLD, **NEW, **files}), "--new-migrations", "-")
    assert done.returncode == 1
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ivle-maint: error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert errors[0].startswith(f"ivle-maint: error: {expected}"), errors[0]
    assert "ivle-maint-manifest-" not in done.stderr
    assert node.service_running("apache2") and marker_keys(node) == []
    assert journal(node) == {}


def test_log_rotation_never_follows_a_symlink_named_like_a_log(node_factory: Any,
                                                               tmp_path: Path) -> None:
    """[logs] keep = 2 with a link among the logs: its target is neither
    copied into the log directory nor counted, real logs are not deleted for it."""
    node = at_version_1_0(node_factory(users=2, consoles=1))
    set_setting(node, "logs", "keep", "2")
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    node.maint_log_dir.mkdir(parents=True, exist_ok=True)
    old = node.maint_log_dir / "jails-old-20200101T000000Z.log"
    old.write_text("an earlier run\n")
    os.utime(old, (1_000_000, 1_000_000))
    link = node.maint_log_dir / "upgrade-planted-20000101T000000Z.log"
    link.symlink_to(victim)
    assert preinst(node).returncode == 0
    assert victim.read_text() == "root:secret\n" and link.is_symlink()
    assert not link.with_name(link.name + ".gz").exists()
    # keep = 2: the earlier run's log (the previous one: plain) and this run's.
    assert old.read_text() == "an earlier run\n"
    assert len(list(node.maint_log_dir.glob("upgrade-1.0_to_1.1-*.log"))) == 1


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


def test_a_version_with_a_newline_from_a_hand_made_hook_call_is_refused(node: Any) -> None:
    """It would name a second journal beside the real one ("1.0 -> 1.1\\n")
    and split every later message."""
    done = cli(node, "hook", "preinst", "upgrade", "1.0", "1.1\n")
    assert done.returncode == 2
    assert done.stderr == "ivle-maint: error: preinst upgrade: not a valid version: '1.1\\n'\n"
    assert node.service_running("apache2") and journal(node) == {}
    assert not list(node.state_dir.glob("journal/*"))


@pytest.mark.parametrize("text", [b"[1, 2]\n", b'"a string"\n', b'{"1.0->1.1": [1]}\n',
                                  b"{not json", b"\xff\xfe"])
def test_a_damaged_pins_file_is_one_line_never_a_traceback(node_factory: Any,
                                                              text: bytes) -> None:
    node = at_version_1_0(node_factory(users=2, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node, migrations={**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"})
    assert postinst(node).returncode == 1  # a dump is pinned
    pins = node.backup_dir / "pinned.json"
    assert pins.exists()
    pins.write_bytes(text)
    status = cli(node, "status")  # shows the journal, without the dump
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    done = cli(node, "rerun")  # would rotate dumps: stops at the migrate step
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ivle-maint: error: ")]
    assert len(errors) == 1 and f"{pins}: unreadable (" in errors[0], done.stderr
    assert "repair or remove it" in errors[0]
    assert pins.read_bytes() == text

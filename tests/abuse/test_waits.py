"""Gate 6 (gates/waits.py): every wait bounded, told and interruptible.

A real `ivle-maint` process, a real PostgreSQL session holding a lock the
migration needs, real signals.  Nothing here asserts on time: the told
line is asserted by its content, the give-up by its message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import error_lines, reference_state, resume_line
from support.db_site import add_settings, baselined_site
from support.held_steps import AFTER_STEPS, BEFORE_STEPS, held_in
from support.migration_site import Site
from support.upgrade_helpers import (
    ALL_KEYS,
    OLD_KEYS,
    at_version_1_0,
    cli,
    final_state,
    journal,
    marker_keys,
    postinst,
    preinst,
    set_setting,
    start_cli,
    unpack,
    wait_for_step,
)

pytestmark = pytest.mark.needs_postgres

REPO = Path(__file__).resolve().parents[2]
ALTER = "ALTER TABLE login ADD COLUMN blocked int;\n"


@pytest.fixture
def db(postgres: Any, tmp_path: Path) -> Iterator[Site]:
    """A baselined database with one migration pending that alters login."""
    with baselined_site(postgres, tmp_path) as site:
        site.add_migration("20100101-01.sql", ALTER)
        # One wait per statement (no tries that give way): the session's lock_timeout.
        add_settings(site, statement_lock_timeout=4, tell_interval=0.5, ddl_lock_timeout=0)
        yield site


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def argv(site: Site) -> list[str]:
    conf = site.root / "etc" / "ivle-maint.conf"
    return [sys.executable, "-m", "ivle_maint", "--config", str(conf), "db", "migrate",
            "--no-backup"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def migrate(site: Site) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(site), env=env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


def lock_login(site: Site) -> Any:
    """Another session: ACCESS EXCLUSIVE on login, its transaction left open."""
    holder = site.connect()
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE login IN ACCESS EXCLUSIVE MODE")
    return holder


def told(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "has waited" in line]


def waiting_alter(site: Site) -> list[tuple[Any, ...]]:
    """Server sessions still running (or waiting in) the migration's ALTER."""
    return site.query("SELECT pid, state, wait_event_type FROM pg_stat_activity "
                      "WHERE query LIKE 'ALTER TABLE login ADD COLUMN blocked%%' "
                      "AND state <> 'idle' AND pid <> pg_backend_pid()")


def test_a_blocked_migration_names_the_holder_and_gives_up_in_one_line(db: Site) -> None:
    holder = lock_login(db)
    pid = holder.info.backend_pid
    marker_before = db.marker()
    try:
        done = migrate(db)
    finally:
        holder.rollback()
        holder.close()
    assert done.returncode == 1, done.stderr
    lines = told(done.stderr)
    assert lines, done.stderr
    assert lines[0].startswith("ivle-maint: migration 20100101-01 has waited")
    assert f"held by server pid {pid} (user {db.pg.ivle_user}" in lines[0]
    assert "LOCK TABLE login IN ACCESS EXCLUSIVE MODE" in lines[0]
    assert "AccessExclusiveLock on login" in lines[0]
    assert "gives up after 4s ([database] statement_lock_timeout)" in lines[0]
    [error] = error_lines(done)
    assert "canceling statement due to lock timeout" in error
    assert f"SELECT pg_terminate_backend({pid});" in error
    # The same command, pasted: its settings file and its options too.
    assert resume_line(done.stderr) == " ".join(["ivle-maint", *argv(db)[3:]])
    # Nothing of it applied; the rerun, once the lock is free, completes.
    assert "blocked" not in db.columns("login") and db.marker() == marker_before
    again = migrate(db)
    assert again.returncode == 0, again.stderr
    assert "blocked" in db.columns("login") and "20100101-01" in db.marker()


def test_a_dump_blocked_by_a_lock_gives_up_too(db: Site) -> None:
    db.settings(backup=True)
    add_settings(db, statement_lock_timeout=2)
    holder = lock_login(db)
    try:
        done = subprocess.run(argv(db)[:-1], env=env(), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
    finally:
        holder.rollback()
        holder.close()
    assert done.returncode == 1, done.stderr
    [error] = error_lines(done)
    assert "pg_dump of database" in error and "[database] statement_lock_timeout" in error
    assert "blocked" not in db.columns("login") and not list(db.backups.glob("*.dump"))


@pytest.mark.parametrize("sig,status,said", [
    (signal.SIGINT, 130, "ivle-maint: interrupted (SIGINT)"),
    (signal.SIGTERM, 143, "ivle-maint: terminated (SIGTERM)"),
])
def test_a_signal_cancels_the_blocked_statement_on_the_server(
        db: Site, tmp_path: Path, sig: int, status: int, said: str) -> None:
    # it would wait for ever
    add_settings(db, statement_lock_timeout=0, tell_interval=0.5, ddl_lock_timeout=0)
    holder = lock_login(db)
    err = tmp_path / "stderr"
    try:
        with err.open("w") as handle:
            proc = subprocess.Popen(argv(db), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=handle, stdin=subprocess.DEVNULL, text=True)
        try:
            wait_for(lambda: bool(told(err.read_text())) or proc.poll() is not None,
                     "ivle-maint tells the wait")
            assert proc.poll() is None, err.read_text()
            assert waiting_alter(db)  # the server session waits for the lock
            proc.send_signal(sig)
            assert proc.wait(timeout=60) == status, err.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # The server's statement is cancelled, not left waiting for the lock.
        wait_for(lambda: not waiting_alter(db), "the server ends the cancelled statement")
        assert said in err.read_text().splitlines()
        assert "Traceback" not in err.read_text()
    finally:
        holder.rollback()
        holder.close()
    assert "blocked" not in db.columns("login")
    again = migrate(db)
    assert again.returncode == 0, again.stderr
    assert "blocked" in db.columns("login")


# -- signals within an upgrade: journaled, and rerun resumes -----------------------

def upgrade_alter_waits(node: Any) -> bool:
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%%ADD COLUMN upgrade_notice%%'")
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def no_step_left_running(node: Any) -> dict[str, Any]:
    steps = journal(node).get("steps", {})
    assert not [name for name, rec in steps.items() if rec.get("status") == "running"], steps
    return steps


def test_sigterm_during_the_upgrade_migration_is_journaled_and_rerun_completes(
        node_factory: Any) -> None:
    node = at_version_1_0(node_factory(users=3, consoles=1, role="both"))
    assert preinst(node).returncode == 0
    unpack(node)
    set_setting(node, "database", "backup", "false")  # pg_dump would wait first
    holder = node.connect()
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE login IN ACCESS EXCLUSIVE MODE")
    try:
        proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure",
                         "1.0")
        try:
            wait_for_step(node, "migrate", proc)
            wait_for(lambda: upgrade_alter_waits(node) or proc.poll() is not None,
                     "the migration waits for the lock")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 143, err
        assert "ivle-maint: terminated (SIGTERM)" in err.splitlines()
        assert "Traceback" not in err
        assert resume_line(err)
        steps = no_step_left_running(node)
        assert steps["migrate"] == {**steps["migrate"], "status": "interrupted",
                                    "error": "terminated (SIGTERM)"}
        wait_for(lambda: not upgrade_alter_waits(node), "the server ends the statement")
        assert marker_keys(node) == OLD_KEYS
    finally:
        holder.rollback()
        holder.close()
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert journal(node)["state"] == "complete" and marker_keys(node) == ALL_KEYS


@pytest.fixture
def reference(node_factory: Any) -> dict[str, Any]:
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves (one per worker)."""
    return reference_state(node_factory, users=3, consoles=1, role="both")


def interrupt_at(node: Any, step: str, sig: int, delay: float, args: tuple[str, ...], *,
                 pythonpath: tuple[str, ...] = ()) -> int:
    """Run ivle-maint ARGS, deliver SIG DELAY seconds after STEP has begun; its
    exit status (0 when it ended first)."""
    launched = time.time()  # the journal's clock: a step this run began
    proc = start_cli(node, *args, pythonpath=pythonpath)
    try:
        while proc.poll() is None:
            record = journal(node).get("steps", {}).get(step, {})
            if record.get("started", 0) >= launched:
                time.sleep(delay)
                proc.send_signal(sig)
                break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err, err
    # 0 or -SIG: it had ended its work (and then the signal's default action).
    assert proc.returncode in (0, -sig, 128 + sig), err
    said = ""
    if proc.returncode > 0:
        said = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted (SIGINT)"
        assert f"ivle-maint: {said}" in err.splitlines()
    steps = no_step_left_running(node)
    if any(rec.get("error") == said for rec in steps.values()):
        assert resume_line(err)  # the step interrupted: how to go on
    return proc.returncode


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_signal_at_any_step_leaves_a_node_rerun_completes(
        node_factory: Any, reference: dict[str, Any], seed: int) -> None:
    """Fault injection: SIGINT or SIGTERM as each step begins or a moment into
    it (drawn from SEED), through preinst run again (dpkg's next attempt),
    then postinst and rerun: no step is left unjournaled, and the last rerun
    ends where an uninterrupted upgrade ends."""
    draw = random.Random(seed)

    def point() -> tuple[int, float]:
        return draw.choice([signal.SIGINT, signal.SIGTERM]), draw.choice([0, 0, 0.05, 0.2])

    node = at_version_1_0(node_factory(users=3, consoles=1, role="both"))
    preinst_args = ("hook", "preinst", "upgrade", "1.0", "1.1")
    for step in ("stop-web", "stop-consoles", "unmount-jails", "baseline"):
        interrupt_at(node, step, *point(), preinst_args)
    done = preinst(node)
    assert done.returncode == 0, done.stderr
    unpack(node)
    args: tuple[str, ...] = ("hook", "--package-version", "1.1", "postinst", "configure", "1.0")
    for step in ("migrate", "rebuild-jail", "remake-users", "restart-usrmgt", "media-version",
                 "start-web"):
        interrupt_at(node, step, *point(), args)
        args = ("rerun",)
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference



@pytest.mark.parametrize("step", [*BEFORE_STEPS, *AFTER_STEPS])
def test_ctrl_c_in_any_step_exits_130_journaled_interrupted_and_rerun_completes(
        node_factory: Any, reference: dict[str, Any], tmp_path: Path, step: str) -> None:
    """SIGINT while STEP runs (dpkg's preinst or postinst): exit 130, the resume
    line, the step journaled (and shown by `status`) as interrupted, never as
    a failure, nothing given back; `rerun` then completes the upgrade."""
    node = at_version_1_0(node_factory(users=3, consoles=1, role="both"))
    if step in AFTER_STEPS:
        assert preinst(node).returncode == 0
        args: tuple[str, ...] = ("hook", "--package-version", "1.1", "postinst", "configure",
                                 "1.0")
    else:
        args = ("hook", "preinst", "upgrade", "1.0", "1.1")
    with held_in(node, step, tmp_path) as pythonpath:
        status = interrupt_at(node, step, signal.SIGINT, 0.3, args, pythonpath=pythonpath)
    assert status == 130
    recorded = journal(node)
    assert recorded["state"] == "in-progress"  # not abandoned: nothing was given back
    assert {k: recorded["steps"][step][k] for k in ("status", "error")} == \
        {"status": "interrupted", "error": "interrupted (SIGINT)"}
    shown = cli(node, "status")
    assert f"  {step}: interrupted: interrupted (SIGINT)" in shown.stdout.splitlines()
    done = cli(node, "rerun")
    if step in BEFORE_STEPS:  # the before-phase finished; the new code is dpkg's to unpack
        assert done.returncode == 1 and "1.1's code is not installed" in done.stderr, \
            done.stderr
        assert journal(node)["steps"][step]["status"] == "done"
        unpack(node)
        done = postinst(node)
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference


# -- steps at the same time: migrate and rebuild-jail (issue 25) ----------------------

def tools_of(node: Any, name: str) -> list[int]:
    """Live processes of the stand-in NAME run for NODE (its IVLECONF)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and any(a.endswith(name.encode()) for a in argv) and \
                f"IVLECONF={node.conf_dir}".encode() in environ:
            found.append(int(entry.name))
    return found


def sleeping_migration(node: Any) -> bool:
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND query LIKE 'SELECT pg_sleep(120)%%' AND pid <> pg_backend_pid()")
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_migrate_and_rebuild_jail_overlap_ends_both_and_rerun_completes(
        node_factory: Any, reference: dict[str, Any], sig: int) -> None:
    """Both steps under way at once (a migration in pg_sleep, ivle-buildjail
    in its delay): the signal to a real ivle-maint ends the tool's process
    and the statement on the server, journals both as interrupted, exits
    130/143 with the resume line; the rerun completes the upgrade."""
    node = at_version_1_0(node_factory(users=3, consoles=1, role="both"))
    assert preinst(node).returncode == 0
    unpack(node, migrations={**OLD, **NEW, "20100201-01.sql": "SELECT pg_sleep(120);\n" +
                             NEW["20100201-01.sql"]})
    node.set_fakes("ivle-buildjail", delay=120)
    proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")
    try:
        wait_for(lambda: proc.poll() is not None or (
            sleeping_migration(node) and bool(tools_of(node, "ivle-buildjail"))),
            "the migration and ivle-buildjail both run")
        tools = tools_of(node, "ivle-buildjail")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    said = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted (SIGINT)"
    assert proc.returncode == 128 + sig, err
    assert f"ivle-maint: {said}" in err.splitlines() and "Traceback" not in err
    assert resume_line(err)
    steps = no_step_left_running(node)
    for step in ("migrate", "rebuild-jail"):
        assert {k: steps[step][k] for k in ("status", "error")} == \
            {"status": "interrupted", "error": said}
    assert "remake-users" not in steps
    assert tools and not [pid for pid in tools if Path(f"/proc/{pid}").exists()
                          and pid in tools_of(node, "ivle-buildjail")]
    wait_for(lambda: not sleeping_migration(node), "the server ends the statement")
    assert marker_keys(node) == OLD_KEYS

    node.set_fakes("ivle-buildjail", delay=0)
    unpack(node)  # 1.1's own migrations
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference


# -- reading a pipe ------------------------------------------------------------------

def test_a_manifest_on_a_terminal_is_refused_not_waited_for() -> None:
    """`--new-migrations -` typed at a terminal: one line, no wait for an EOF."""
    main, tty = os.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ivle_maint", "hook", "--new-migrations", "-", "preinst",
             "upgrade", "1.0", "1.1"],
            env=env(), stdin=tty, capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.close(main)
        os.close(tty)
    assert done.returncode == 1
    assert error_lines(done) == ["ivle-maint: error: migrations manifest on stdin: is a "
                                 "terminal; give a file, or pipe it in"]


def test_a_pipe_never_closed_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from ivle_maint import migration_manifest
    from ivle_maint.errors import MaintError
    from ivle_maint.gates import waits

    monkeypatch.setattr(waits, "PIPE_QUIET", 0.5)
    reader, writer = os.pipe()
    os.write(writer, b'{"count": 0}\n')  # a start, and the writer never closes
    try:
        with open(reader, "rb", closefd=False) as handle:
            monkeypatch.setattr(sys, "stdin", handle)
            with pytest.raises(MaintError, match=r"nothing read for 0\.5s and no end"):
                migration_manifest.read("-")
    finally:
        os.close(reader)
        os.close(writer)

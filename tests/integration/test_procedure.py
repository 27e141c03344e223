"""IVLE's whole upgrade procedure on throwaway nodes, through dpkg's hook calls.

Every effect of the steps of IVLE's upgrade procedure is observed on real services, processes,
mounts and a real PostgreSQL server; failures are real ones (a stand-in
that fails, a migration that fails, a held lock, SIGKILL).
"""

from __future__ import annotations

import signal

import pytest

from ivle_maint.db.lock import LOCK_ID
from ivle_sandbox.cluster import configure
from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import reference_state
from support.upgrade_helpers import (
    ALL_KEYS,
    RESUME_LINE,
    at_version_1_0,
    cli,
    final_state,
    home_checksums,
    ivle_conf_without_media,
    journal,
    marker_keys,
    media_version,
    postinst,
    preinst,
    schema_signature,
    set_setting,
    start_cli,
    stubborn_console,
    unpack,
    wait_for_step,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


def full_upgrade(node) -> None:
    done = preinst(node)
    assert done.returncode == 0, done.stderr
    unpack(node)
    done = postinst(node)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def both(node_factory):
    return at_version_1_0(node_factory(users=6, consoles=3, role="both"))


def test_both_node_every_seed_effect(both):
    homes, conf = home_checksums(both), ivle_conf_without_media(both)
    consoles = both.console_pids()
    assert len(consoles) == 3 and len(both.mounts()) == 18

    done = preinst(both)
    assert done.returncode == 0, done.stderr
    # Before the new code: web down, consoles gone, jails unmounted, the
    # old version's migrations recorded; usrmgt untouched so far.
    assert not both.service_running("apache2")
    assert both.service_running("ivle-usrmgt-server")
    assert both.console_pids() == [] and both.mounts() == []
    assert marker_keys(both) == sorted(k.removesuffix(".sql") for k in OLD)

    unpack(both)
    done = postinst(both)
    assert done.returncode == 0, done.stderr
    state = final_state(both)
    assert state["services"] == {"apache2": True, "ivle-usrmgt-server": True}
    assert state["marker"] == ALL_KEYS
    assert ("upgrade_audit", "note") in state["schema"]
    assert ("login", "upgrade_notice") in state["schema"]
    assert state["template"] == "1.1" and state["media"] == "1.1"
    assert state["journal"] == "complete"
    assert home_checksums(both) == homes
    assert ivle_conf_without_media(both) == conf
    events = [(s, e) for _, s, e in both.service_events()]
    # apache2 stopped once, started once; usrmgt restarted after the stop.
    assert events.count(("apache2", "stop")) == 1
    assert events[-1] == ("apache2", "start")
    assert events.index(("apache2", "stop")) < events.index(("ivle-usrmgt-server", "stop"))
    assert "web service down for" in done.stderr
    assert "migrations applied: 3 20100201-01 20100201-02 20100215" in done.stderr


def test_migrate_and_rebuild_jail_run_at_the_same_time_and_the_summary_says_so(both):
    # Each lasts a while (a migration that sleeps, ivle-buildjail's delay):
    # one after the other, rebuild-jail would begin after migrate ended.
    assert preinst(both).returncode == 0
    unpack(both, migrations={**OLD, **NEW, "20100201-01.sql": "SELECT pg_sleep(1);\n" +
                             NEW["20100201-01.sql"]})
    both.set_fakes("ivle-buildjail", delay=1)
    done = postinst(both)
    assert done.returncode == 0, done.stderr
    steps = journal(both)["steps"]
    migrate, rebuild, remake = (steps[n] for n in ("migrate", "rebuild-jail", "remake-users"))
    assert rebuild["started"] < migrate["finished"] and migrate["started"] < rebuild["finished"]
    assert remake["started"] >= max(migrate["finished"], rebuild["finished"])  # IVLE's order
    assert "ivle-maint:   at the same time: migrate, rebuild-jail (" in done.stderr
    lines = done.stderr.splitlines()
    assert "ivle-maint: apply database migrations ... (at the same time: rebuild the jail)" in lines
    assert final_state(both)["journal"] == "complete"


def test_slave_node_leaves_the_database_and_template_alone(node_factory):
    slave = at_version_1_0(node_factory(users=4, consoles=2, role="slave"))
    # A slave with no master at all: under 'auto' it would wait for one, as a
    # slave on IVLE's database must (test_cluster.py); 'never' lets it
    # run its own steps alone.
    configure(slave, "slave", {"coordinate": "never"})
    full_upgrade(slave)
    state = final_state(slave)
    assert state["services"] == {"apache2": True}
    assert state["mounts"] == 0 and state["consoles"] == 0
    assert state["marker"] == []  # the master migrates, not a slave
    assert state["template"] == "1.0"  # the master rebuilds the jail
    assert state["media"] == "1.1"


def test_master_node_migrates_rebuilds_and_restarts_usrmgt(node_factory):
    master = at_version_1_0(node_factory(users=4, role="master", mount=False))
    full_upgrade(master)
    state = final_state(master)
    assert state["services"] == {"ivle-usrmgt-server": True}
    assert state["marker"] == ALL_KEYS
    assert state["template"] == "1.1"
    assert state["media"] == "1.0"  # slaves change the media version
    events = [(s, e) for _, s, e in master.service_events("ivle-usrmgt-server")]
    assert events[-2:] == [("ivle-usrmgt-server", "stop"), ("ivle-usrmgt-server", "start")]


# Valid SQL that fails on the server (a syntax error is now refused before
# any migration runs): the earlier migrations of the run stay applied.
BROKEN_MIGRATION = {**OLD, **NEW,
                    "20100215.sql": "CREATE TABLE upgrade_audit (id int REFERENCES nowhere);\n"}


def inject(node, where: str) -> None:
    if where == "rebuild-jail":
        node.set_fakes("ivle-buildjail", fail=True)
    elif where == "remake-users":
        node.set_fakes("ivle-remakeuser", fail_users=["user0002"])
    elif where == "restart-usrmgt":
        node.set_fakes("ivle-usrmgt-server", fail=["start"])
    elif where == "start-web":
        node.set_fakes("apache2", fail=["start"])
    elif where == "media-version":  # a value ivle-maint refuses to rewrite
        text = node.ivle_conf.read_text()
        node.ivle_conf.write_text(text.replace("version = 1.0", 'version = """1.0"""'))


def repair(node, where: str) -> None:
    if where == "migrate":
        unpack(node)  # the fixed release replaces the broken file
    elif where == "rebuild-jail":
        node.set_fakes("ivle-buildjail", fail=False)
    elif where == "remake-users":
        node.set_fakes("ivle-remakeuser", fail_users=[])
    elif where == "media-version":
        text = node.ivle_conf.read_text()
        node.ivle_conf.write_text(text.replace('version = """1.0"""', "version = 1.0"))
    elif where in ("restart-usrmgt", "start-web"):
        node.set_fakes("ivle-usrmgt-server" if where == "restart-usrmgt" else "apache2",
                       fail=[])


@pytest.mark.parametrize(
    "where",
    ["migrate", "rebuild-jail", "remake-users", "restart-usrmgt", "media-version", "start-web"],
)
def test_failed_step_then_rerun_ends_like_an_uninterrupted_run(node_factory, where):
    reference = reference_state(node_factory, users=6, consoles=3)
    node = at_version_1_0(node_factory(users=6, consoles=3))
    homes = home_checksums(node)
    assert preinst(node).returncode == 0
    schema_before = schema_signature(node)
    inject(node, where)
    conf = ivle_conf_without_media(node)
    unpack(node, migrations=BROKEN_MIGRATION if where == "migrate" else None)

    failed = postinst(node)
    assert failed.returncode == 1
    assert RESUME_LINE in failed.stderr  # the site is down: say how to resume
    assert journal(node)["steps"][where]["status"] == "failed"
    if where == "migrate":  # the earlier ones stay, nothing of the failed one
        added = set(schema_signature(node)) - set(schema_before)
        assert added == {("login", "upgrade_notice")}
        assert marker_keys(node) == ALL_KEYS[:-1]
    assert home_checksums(node) == homes

    if where == "media-version":  # refused whole: not a byte changed
        assert ivle_conf_without_media(node) == conf and 'version = """1.0"""' in \
            node.ivle_conf.read_text()
    repair(node, where)
    conf = ivle_conf_without_media(node)
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference
    assert home_checksums(node) == homes
    assert ivle_conf_without_media(node) == conf
    # Finished steps were not repeated: one stop of the web server.
    assert [e for _, _, e in node.service_events("apache2")].count("stop") == 1
    # dpkg --configure -a afterwards finds nothing left to do.
    again = postinst(node)
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.parametrize("where", ["rebuild-jail", "remake-users", "migrate"])
def test_sigkill_mid_step_then_rerun_completes(node_factory, where):
    reference = reference_state(node_factory, users=6, consoles=3)
    node = at_version_1_0(node_factory(users=6, consoles=3))
    homes = home_checksums(node)
    assert preinst(node).returncode == 0
    migrations = None
    if where == "rebuild-jail":
        node.set_fakes("ivle-buildjail", delay=30)
    elif where == "remake-users":
        node.set_fakes("ivle-remakeuser", delay=30)
    else:  # a migration that is still running when the runner dies
        migrations = {**OLD, **NEW, "20100201-01.sql":
                      "SELECT pg_sleep(30);\n" + NEW["20100201-01.sql"]}
    unpack(node, migrations=migrations)
    proc = start_cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0")
    wait_for_step(node, where, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    node.set_fakes("ivle-buildjail", delay=0)
    node.set_fakes("ivle-remakeuser", delay=0)
    if where == "migrate":
        unpack(node)
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert final_state(node) == reference
    assert home_checksums(node) == homes


def test_sigkill_of_the_preinst_then_dpkg_abort_restores_the_site(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    # A process in a jail that ignores SIGTERM keeps stop-consoles waiting.
    set_setting(node, "consoles", "term_timeout", "30")
    stubborn = stubborn_console(node)
    proc = start_cli(node, "hook", "preinst", "upgrade", "1.0", "1.1")
    wait_for_step(node, "stop-consoles", proc)
    proc.kill()
    proc.wait()
    assert not node.service_running("apache2")
    # dpkg saw the preinst fail: NEW-postrm, then OLD-postinst abort-upgrade.
    done = cli(node, "hook", "postrm", "abort-upgrade", "1.0", "1.1")
    assert done.returncode == 0, done.stderr
    assert "restarted: start-web" in done.stderr
    assert cli(node, "hook", "postinst", "abort-upgrade", "1.1").returncode == 0
    assert node.service_running("apache2")
    # The retried upgrade escalates to SIGKILL and completes.
    set_setting(node, "consoles", "term_timeout", "1")
    full_upgrade(node)
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert final_state(node)["marker"] == ALL_KEYS


def test_before_phase_failure_restores_the_web_server(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    # Another runner holds the migration lock: the baseline step times out.
    set_setting(node, "database", "lock_timeout", "1")
    holder = node.connect()
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [LOCK_ID])
    try:
        done = preinst(node)
    finally:
        holder.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "upgrade abandoned, services restored" in done.stderr
    assert node.service_running("apache2")
    assert [e for _, _, e in node.service_events("apache2")][-2:] == ["stop", "start"]
    # dpkg then calls the abort forms: nothing left to undo, no error.
    assert cli(node, "hook", "postrm", "abort-upgrade", "1.0").returncode == 0
    assert cli(node, "hook", "postinst", "abort-upgrade", "1.1").returncode == 0
    assert journal(node)["state"] == "aborted"


def test_abort_upgrade_brings_the_web_server_back(both):
    assert preinst(both).returncode == 0
    assert not both.service_running("apache2")
    # The unpack failed: dpkg calls NEW-postrm, then OLD-postinst abort-upgrade.
    done = cli(both, "hook", "postrm", "abort-upgrade", "1.0")
    assert done.returncode == 0, done.stderr
    assert both.service_running("apache2")
    assert "restarted: start-web" in done.stderr
    assert cli(both, "hook", "--package-version", "1.0", "postinst", "abort-upgrade",
               "1.1").returncode == 0
    assert journal(both)["state"] == "aborted"
    # A retried upgrade starts from the beginning and completes.
    full_upgrade(both)
    assert final_state(both)["services"] == {"apache2": True, "ivle-usrmgt-server": True}


def test_preflight_failure_changes_nothing(both):
    done = preinst(both, old="1.1", new="1.0")  # a downgrade
    assert done.returncode == 1
    assert "1.0 is older than 1.1: a downgrade is a rollback, and this node keeps no pinned " \
        "restore point of the upgrade 1.0 -> 1.1" in done.stderr
    assert both.service_running("apache2") and len(both.console_pids()) == 3
    assert len(both.mounts()) == 18 and marker_keys(both) == []


def test_missing_ivle_command_fails_preflight_with_the_site_up(both):
    text = both.maint_conf.read_text()
    both.maint_conf.write_text(text.replace(str(both.commands["ivle-buildjail"]),
                                            "/nonexistent/ivle-buildjail"))
    done = preinst(both)
    assert done.returncode == 1
    assert "IVLE command(s) not found: /nonexistent/ivle-buildjail" in done.stderr
    assert both.service_running("apache2") and len(both.mounts()) == 18


def test_broken_step_library_fails_preflight_with_the_site_up(both, tmp_path):
    # The consoles step imports psutil lazily; a broken install must fail
    # the preflight, not the step after the web server went down.
    (tmp_path / "psutil.py").write_text("raise ImportError('broken python3-psutil')\n")
    done = preinst(both, pythonpath=(str(tmp_path),))
    assert done.returncode == 1
    assert "Python module psutil does not load: broken python3-psutil" in done.stderr
    assert both.service_running("apache2") and len(both.console_pids()) == 3
    assert len(both.mounts()) == 18


def test_two_concurrent_runs_one_refuses(both):
    both.set_fakes("apache2", delay=3)
    first = start_cli(both, "hook", "preinst", "upgrade", "1.0", "1.1")
    wait_for_step(both, "stop-web", first)
    second = cli(both, "rerun")
    assert second.returncode == 75
    assert f"another ivle-maint holds {both.maint_run_dir / 'lock'}: pid {first.pid}" \
        in second.stderr
    assert first.wait(timeout=60) == 0


def test_plan_shows_the_upgrade_and_changes_nothing(both):
    staged = both.root / "staged-1.1"
    staged.mkdir()
    for name, text in {**OLD, **NEW}.items():
        (staged / name).write_text(text)
    done = cli(both, "plan", "--from", "1.0", "--to", "1.1", "--migrations", str(staged))
    assert done.returncode == 0, done.stderr
    assert "upgrade 1.0 -> 1.1" in done.stdout and "role: both" in done.stdout
    assert "media version: 1.0 -> 1.1" in done.stdout
    assert "baseline records the 2 migrations of 1.0 as applied" in done.stdout
    assert f"pending migrations in {staged}: 3\n  20100201-01 (own-transaction)" in done.stdout
    assert "  after  rebuild-jail    rebuild the jail (at the same time as migrate)" in \
        done.stdout.splitlines()
    assert both.service_running("apache2") and len(both.mounts()) == 18
    assert not (both.state_dir / "journal").exists()
    assert media_version(both) == "1.0"


def test_fresh_install_records_what_the_next_upgrade_needs(node_factory):
    node = node_factory(users=2, consoles=0)
    unpack(node, "1.0")
    done = cli(node, "hook", "--package-version", "1.0", "postinst", "configure", "")
    assert done.returncode == 0, done.stderr
    record = (node.state_dir / "installed.json").read_text()
    assert '"version": "1.0"' in record and "20090212-01.sql" in record
    assert node.service_running("apache2")  # no procedure on a fresh install


def test_reinstall_runs_the_procedure_again_with_a_fresh_media_version(both):
    full_upgrade(both)
    assert media_version(both) == "1.1"
    # apt-get install --reinstall: preinst upgrade 1.1 1.1, unpack, postinst.
    assert preinst(both, "1.1", "1.1").returncode == 0
    assert not both.service_running("apache2")
    done = postinst(both, "1.1", "1.1")
    assert done.returncode == 0, done.stderr
    assert media_version(both) == "1.1.r2"
    assert both.service_running("apache2")
    # dpkg --configure -a afterwards: the finished reinstall is not redone.
    assert "already complete" in postinst(both, "1.1", "1.1").stderr
    assert media_version(both) == "1.1.r2"

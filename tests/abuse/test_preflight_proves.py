"""The preflight proves the after-phase (gate 8, ivle_maint/preflight.py).

What the postinst will need is proved while the site is still up, by doing
it or its harmless twin: a read-only /etc/ivle, a table the dumping role
may not read, a revoked INSERT on the marker, a damaged media-version
record, a full state directory each fail the preflight, never the steps
after the migrations.  A fault-injection case applies generated sets of
these faults: either the preflight refuses with the site up, or the
upgrade completes.

Each case runs a real upgrade (`ivle-maint upgrade --source`, the source
install, whose preflight sees the new migrations) on a sandbox node at
1.0 with real PostgreSQL, and asserts one error line, the exit status,
the web server and consoles still up, the old code installed and the
database untouched (no marker written, nothing migrated).  Under dpkg the
preinst checks the new migrations from the package's manifest and names
them as the package ships them.  What the preflight cannot see (an
abandoned preinst, the marker table changed by hand, an applied migration
changed) is answered with advice that, followed, finishes the upgrade.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.db import migrations, pgparse
from ivle_maint.db.lock import LOCK_ID
from ivle_maint.output import RecordingReporter
from ivle_sandbox import mountns
from ivle_sandbox.releases import NEW, OLD, RELEASES
from support.abuse_helpers import one_error_line, reference_state, resume_line
from support.preinst_manifest import manifest, preinst_with
from support.source_tree import source_tree
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
    schema_signature,
    set_setting,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


def upgrade(node: Any, tree: Path) -> subprocess.CompletedProcess[str]:
    return cli(node, "upgrade", "--from", "1.0", "--source", str(tree))


def assert_site_up_and_untouched(node: Any, consoles: list[int], marker: list[str],
                                 schema: list[Any]) -> None:  # fmt: skip
    assert node.service_running("apache2") and node.service_running("ivle-usrmgt-server")
    assert sorted(node.console_pids()) == sorted(consoles)
    assert node.installed_version() == "1.0"
    assert marker_keys(node) == marker and schema_signature(node) == schema
    assert len(node.mounts()) > 0  # the jails are still mounted


def started(node_factory: Any, *, baselined: bool = False) -> tuple[Any, list[int], list[Any]]:
    node = at_version_1_0(node_factory(users=2, consoles=1))
    if baselined:
        assert cli(node, "db", "baseline", OLD_KEYS[-1]).returncode == 0
    return node, node.console_pids(), schema_signature(node)


def test_read_only_backup_directory_fails_the_preflight(node_factory: Any):
    node, consoles, schema = started(node_factory)
    mountns.bind(node.backup_dir, node.backup_dir, readonly=True)
    done = upgrade(node, source_tree(node, RELEASES["1.1"]))
    assert done.returncode == 1
    line = one_error_line(done)
    assert f"{node.backup_dir}: backups cannot be written there (Read-only file system)" in line
    assert_site_up_and_untouched(node, consoles, [], schema)


def test_read_only_backup_directory_in_db_migrate_is_one_line(node_factory: Any):
    node, _, _ = started(node_factory, baselined=True)
    unpack(node, "1.1")
    schema = schema_signature(node)
    mountns.bind(node.backup_dir, node.backup_dir, readonly=True)
    done = cli(node, "db", "migrate")
    assert done.returncode == 1
    assert "Read-only file system" in one_error_line(done)
    assert marker_keys(node) == OLD_KEYS and schema_signature(node) == schema


@pytest.mark.parametrize("baselined", [False, True], ids=["no marker", "marker"])
@pytest.mark.parametrize("unsafe", ["mode 0666", "mode 0664", "owned by nobody"])
def test_a_migration_others_can_write_fails_the_preflight(node_factory: Any, unsafe: str,
                                                          baselined: bool):
    """`upgrade --source`: the trusted-files gate refuses the whole tree
    (exit 2, as bad input) before the preflight starts, the site still up."""
    node, consoles, schema = started(node_factory, baselined=baselined)
    tree = source_tree(node, RELEASES["1.1"])
    path = tree / "userdb" / "migrations" / "20100215.sql"
    if unsafe.startswith("mode"):
        path.chmod(int(unsafe.split()[1], 8))
        expected = "writable by"
    else:
        os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
        expected = "owned by"
    done = upgrade(node, tree)
    assert done.returncode == 2
    line = one_error_line(done)
    assert str(path) in line and expected in line and "refused" in line, line
    assert_site_up_and_untouched(node, consoles, OLD_KEYS if baselined else [], schema)


def test_a_role_that_may_not_create_the_marker_fails_the_preflight(node_factory: Any):
    node, consoles, schema = started(node_factory)
    admin = node.pg.connect(node.dbname, node.pg.superuser)
    admin.autocommit = True
    with admin.cursor() as cur:  # as on PostgreSQL 15 when ivle does not own the database
        cur.execute(f"ALTER SCHEMA public OWNER TO {node.pg.superuser}")
    admin.close()
    done = upgrade(node, source_tree(node, RELEASES["1.1"]))
    assert done.returncode == 1
    line = one_error_line(done)
    assert ("role ivle may not create table ivle_maint_migrations in schema public "
            "(permission denied for schema public)") in line  # fmt: skip
    assert "GRANT CREATE ON SCHEMA public TO ivle" in line
    assert_site_up_and_untouched(node, consoles, [], schema)


BROKEN = {
    "bad name": ({"2010-02-16.sql": "SELECT 1;\n"}, "not a migration file name"),
    "duplicate key": ({"20100216-1.sql": "SELECT 1;\n", "20100216-01.sql": "SELECT 2;\n"},
                      "are both migration 20100216-01"),
    "BEGIN without COMMIT": ({"20100216-01.sql": "BEGIN;\nCREATE TABLE t (x int);\n"},
                             "20100216-01.sql: line 1: BEGIN without a matching COMMIT"),
    "not UTF-8": ({"20100216-01.sql": b"COMMENT ON TABLE login IS '\xe9l\xe8ve';\n"},
                  "20100216-01.sql: not UTF-8 text (byte 27)"),
    "empty": ({"20100216-01.sql": "-- nothing yet\n"},
              "20100216-01.sql: holds no SQL statement"),
    "syntax error": ({"20100216-01.sql": "BEGIN;\nALTER TABLE login ADD x int;\nSELEC 1;\n"
                                         "COMMIT;\n"},
                     '20100216-01.sql: line 3: syntax error at or near "SELEC"'),
}  # fmt: skip


@pytest.mark.parametrize("baselined", [False, True], ids=["no marker", "marker"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_new_migration_fails_the_preflight(node_factory: Any, case: str,
                                                    baselined: bool):
    if case == "syntax error" and not pgparse.available():
        pytest.skip("needs pglast (PostgreSQL's parser): python3-pglast")
    node, consoles, schema = started(node_factory, baselined=baselined)
    files, expected = BROKEN[case]
    tree = source_tree(node, RELEASES["1.1"])
    for name, text in files.items():
        path = tree / "userdb" / "migrations" / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    done = upgrade(node, tree)
    assert done.returncode == 1
    assert expected in one_error_line(done)
    assert_site_up_and_untouched(node, consoles, OLD_KEYS if baselined else [], schema)
    if baselined:
        return
    # Fixed, the same command upgrades.
    for name in files:
        (tree / "userdb" / "migrations" / name).unlink()
    done = upgrade(node, tree)
    assert done.returncode == 0, done.stderr
    assert final_state(node)["marker"] == sorted(k.removesuffix(".sql") for k in {**OLD, **NEW})


def test_an_empty_migration_marked_as_such_is_applied(node_factory: Any):
    node, _, _ = started(node_factory)
    tree = source_tree(node, {**RELEASES["1.1"],
                              "20100216-01.sql": "-- ivle-maint: empty\n-- folded into 20100215\n"})
    done = upgrade(node, tree)
    assert done.returncode == 0, done.stderr
    assert "20100216-01" in marker_keys(node)


def test_the_markers_own_notice_is_not_logged_as_a_migrations(node: Any,
                                                              caplog: pytest.LogCaptureFixture):
    at_version_1_0(node)
    assert cli(node, "db", "baseline", OLD_KEYS[-1]).returncode == 0  # the marker exists
    unpack(node, "1.1")
    caplog.set_level(logging.DEBUG)
    result = migrations.apply_migrations(load_settings(), RecordingReporter(), backup=False)
    assert [a.key for a in result.applied] == sorted(k.removesuffix(".sql") for k in NEW)
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "already exists" in m], said


def test_db_status_before_the_first_upgrade_says_the_upgrade_records_the_baseline(node: Any):
    at_version_1_0(node)
    done = cli(node, "db", "status")
    assert done.returncode == 0
    assert "records the installed version's migrations itself" in done.stdout
    assert "'ivle-maint db baseline THROUGH'" in done.stdout


# ---------------------------------------------------------------- gate 8: proofs


def _admin(node: Any, sql: str) -> None:
    conn = node.pg.connect(node.dbname, node.pg.superuser)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


@contextmanager
def read_only_conf_dir(node: Any) -> Iterator[str]:
    mountns.bind(node.conf_dir, node.conf_dir, readonly=True)
    try:
        yield f"{node.conf_dir}: ivle.conf cannot be rewritten there (Read-only file system)"
    finally:
        mountns.umount(node.conf_dir)


@contextmanager
def read_only_jail_tree(node: Any) -> Iterator[str]:
    mountns.bind(node.jails_src, node.jails_src, readonly=True)
    try:
        yield f"{node.jails_src}: the jails cannot be rebuilt there (Read-only file system)"
    finally:
        mountns.umount(node.jails_src)


@contextmanager
def unreadable_table(node: Any) -> Iterator[str]:
    _admin(node, f"REVOKE SELECT ON enrolment FROM {node.pg.ivle_user}")
    yield (f"role {node.pg.ivle_user} cannot read table public.enrolment "
           "(permission denied for table enrolment)")


@contextmanager
def marker_insert_revoked(node: Any) -> Iterator[str]:
    _admin(node, f"REVOKE INSERT ON ivle_maint_migrations FROM {node.pg.ivle_user}")
    yield (f"role {node.pg.ivle_user} may not insert into table ivle_maint_migrations "
           "(permission denied for table ivle_maint_migrations)")


@contextmanager
def login_that_is_an_option(node: Any) -> Iterator[str]:
    """A user whose login ivle-remakeuser would read as an option (gates/names.py)."""
    _admin(node, "INSERT INTO login (login, unixid, state, nick, fullname) "
                 "VALUES ('--help', 900001, 'enabled', 'x', 'x')")
    yield "the login table holds the login '--help', which starts with '-'"


@contextmanager
def damaged_media_record(node: Any) -> Iterator[str]:
    (node.state_dir / "media-versions.json").write_text('{"entries": [{"value": ')
    yield "media-versions.json: unreadable media version record"


@contextmanager
def full(directory: Path, left: int) -> Iterator[None]:
    """A tiny tmpfs over DIRECTORY, holding what was there, LEFT bytes free."""
    mountns.require_private(directory.parent)
    directory.mkdir(parents=True, exist_ok=True)
    keep = Path(tempfile.mkdtemp())
    shutil.copytree(directory, keep / "d", symlinks=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k,mode=0755", "tmpfs",
                    str(directory)], check=True)
    try:
        shutil.copytree(keep / "d", directory, symlinks=True, dirs_exist_ok=True)
        fs = os.statvfs(directory)
        free = fs.f_bavail * fs.f_frsize
        (directory / "filler").write_bytes(b"\0" * max(0, free - left))
        yield
    finally:
        mountns.umount(directory, lazy=True)
        shutil.rmtree(keep)


@contextmanager
def full_state_directory(node: Any) -> Iterator[str]:
    # 8 KiB: enough for the before-phase's journal, not for the after-phase's.
    with full(node.state_dir, 8192):
        yield (f"{node.state_dir}: the upgrade's journal and records cannot be written there "
               "(No space left on device)")


# A full log directory is no fault here: no step needs the log, and the run
# completes unlogged (tests/abuse/test_root_and_output.py, gate 10).


FAULTS = {
    "read-only ivle.conf directory": read_only_conf_dir,
    "read-only jail tree": read_only_jail_tree,
    "table the dumping role may not read": unreadable_table,
    "INSERT on the marker revoked": marker_insert_revoked,
    "damaged media-version record": damaged_media_record,
    "a login that is an option": login_that_is_an_option,
    "full state directory": full_state_directory,
}


def assert_refused_with_the_site_up(node: Any, done: subprocess.CompletedProcess[str],
                                    consoles: list[int], schema: list[Any]) -> str:
    assert done.returncode == 1, done.stderr
    line = one_error_line(done)
    assert_site_up_and_untouched(node, consoles, OLD_KEYS, schema)
    return line


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_preflight_proves_what_the_after_phase_needs(node_factory: Any, fault: str):
    node, consoles, schema = started(node_factory, baselined=True)
    tree = source_tree(node, RELEASES["1.1"])
    with FAULTS[fault](node) as expected:
        done = upgrade(node, tree)
        line = assert_refused_with_the_site_up(node, done, consoles, schema)
        assert expected in line, line
    assert not (node.state_dir / "journal" / "1.0_to_1.1.json").exists()


FAULT_SETS = st.sets(st.sampled_from(sorted(FAULTS)), max_size=len(FAULTS))


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(faults=FAULT_SETS)
def test_faults_either_fail_the_preflight_with_the_site_up_or_the_upgrade_completes(
        node_factory: Any, faults: set[str]):
    node, consoles, schema = started(node_factory, baselined=True)
    try:
        tree = source_tree(node, RELEASES["1.1"])
        with ExitStack() as stack:
            for fault in sorted(faults):
                stack.enter_context(FAULTS[fault](node))
            done = upgrade(node, tree)
            if done.returncode == 0:
                assert not faults, f"{sorted(faults)} did not stop the upgrade"
                assert final_state(node)["marker"] == ALL_KEYS
                assert node.installed_version() == "1.1"
                assert node.service_running("apache2")
            else:
                assert faults, done.stderr
                assert_refused_with_the_site_up(node, done, consoles, schema)
    finally:
        node.teardown()


# ---------------------------------------------------------------- the way forward


def test_an_abandoned_preinst_says_to_fix_the_cause_and_upgrade_again(node_factory: Any):
    node = at_version_1_0(node_factory(users=1, consoles=0))
    # Another runner holds the migration lock: the baseline step times out,
    # after the web server was stopped: the upgrade is abandoned.
    set_setting(node, "database", "lock_timeout", "1")
    holder = node.connect()
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [LOCK_ID])
    try:
        done = preinst(node)
    finally:
        holder.close()
    assert done.returncode == 1
    assert "upgrade abandoned, services restored" in one_error_line(done)
    assert resume_line(done.stderr) == (
        "fix the cause, then run the upgrade again: apt-get upgrade  "
        "(or: apt-get install ivle=1.1)")
    assert node.service_running("apache2")
    # What dpkg --configure -a and ivle-maint rerun would say: nothing to do.
    assert "nothing to do" in cli(node, "rerun").stderr
    # Followed, the advice upgrades: apt-get runs the preinst again, unpacks,
    # and configures.
    assert preinst(node).returncode == 0
    unpack(node)
    assert postinst(node).returncode == 0
    assert final_state(node)["marker"] == ALL_KEYS


def _upgrade_by_dpkg(node: Any) -> None:
    assert preinst(node).returncode == 0
    unpack(node)
    done = postinst(node)
    assert done.returncode == 0, done.stderr
    assert final_state(node)["marker"] == ALL_KEYS


def test_a_marker_row_deleted_by_hand_is_recorded_again_as_the_advice_says(node_factory: Any):
    node = started(node_factory, baselined=True)[0]
    _admin(node, "DELETE FROM ivle_maint_migrations WHERE key = '20090105'")
    done = preinst(node)
    assert done.returncode == 1
    line = one_error_line(done)
    assert "20090105 are older than the newest applied (20090212-01) but not recorded" in line
    assert node.service_running("apache2") and node.installed_version() == "1.0"
    # --allow-out-of-order would run 20090105 a second time; the advice records it.
    command = line.split("record them without running them: ", 1)[1].split(", then", 1)[0]
    assert command == "ivle-maint db baseline --force 20090105"
    assert cli(node, *command.split()[1:]).returncode == 0
    assert marker_keys(node) == OLD_KEYS
    _upgrade_by_dpkg(node)


def test_a_marker_row_added_by_hand_is_deleted_as_the_advice_says(node_factory: Any):
    node = at_version_1_0(node_factory(users=1, consoles=0))
    assert cli(node, "db", "baseline", OLD_KEYS[-1]).returncode == 0
    _admin(node, "INSERT INTO ivle_maint_migrations (key, filename, checksum, mode, host, "
                 "ivle_maint_version) VALUES ('20990101', '20990101.sql', 'x', 'transaction', "
                 "'elsewhere', '0')")
    assert preinst(node).returncode == 0
    unpack(node)
    failed = postinst(node)
    assert failed.returncode == 1
    line = one_error_line(failed)
    assert "records migration 20990101 as applied, newer than every shipped" in line
    delete = line.split("delete its row (", 1)[1].split("), then", 1)[0]
    assert delete == "DELETE FROM ivle_maint_migrations WHERE key = '20990101'"
    _admin(node, delete)
    assert resume_line(failed.stderr).startswith("dpkg --configure -a")
    done = postinst(node)  # dpkg --configure -a
    assert done.returncode == 0, done.stderr
    assert final_state(node)["marker"] == ALL_KEYS


def test_a_marker_column_dropped_by_hand_is_added_back_as_the_advice_says(node_factory: Any):
    node = started(node_factory, baselined=True)[0]
    _admin(node, "ALTER TABLE ivle_maint_migrations DROP COLUMN note")
    done = preinst(node)
    assert done.returncode == 1
    line = one_error_line(done)
    assert "table ivle_maint_migrations has no column note" in line
    assert node.service_running("apache2") and node.installed_version() == "1.0"
    alter = line.split("then run again: ", 1)[1]
    assert alter == "ALTER TABLE ivle_maint_migrations ADD COLUMN note text"
    _admin(node, alter)
    _upgrade_by_dpkg(node)


def test_a_marker_checksum_changed_by_hand_is_accepted_as_the_advice_says(node_factory: Any):
    node = started(node_factory, baselined=True)[0]
    _admin(node, "UPDATE ivle_maint_migrations SET checksum = 'x' WHERE key = '20090105'")
    done = preinst(node)
    assert done.returncode == 1
    assert "migration 20090105 was applied but" in one_error_line(done)
    assert node.service_running("apache2") and node.installed_version() == "1.0"
    resume = resume_line(done.stderr)
    command = resume.split(", then run the upgrade again: ", 1)[0]
    assert command == "ivle-maint db migrate --accept-changed 20090105", resume
    assert cli(node, *command.split()[1:]).returncode == 0
    _upgrade_by_dpkg(node)


# -- a broken migration named as the package ships it ------------------------------

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


# -- what a failed preflight or a failed migration leaves to the next command ---------

def test_failed_preflight_leaves_nothing_for_a_rerun(node_factory):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    done = preinst(node, old="1.1", new="1.0")  # a downgrade: refused by the preflight
    assert done.returncode == 1 and node.service_running("apache2")
    again = cli(node, "rerun")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert node.service_running("apache2") and len(node.console_pids()) == 1


@pytest.fixture
def reference(node_factory):
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves (one per worker)."""
    return reference_state(node_factory, users=4, consoles=1)


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


# ---------------------------------------------------------------- gate 8: the cluster and the end


def test_a_slave_whose_role_may_not_claim_a_media_version_fails_the_preflight(
        node_factory: Any):
    """INSERT on ivle_maint_media revoked: the slave's preinst refuses with its
    web server still up, not its media-version step after the code changed."""
    from ivle_sandbox.cluster import build_cluster
    from support.cluster_helpers import PATIENT

    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    slave = cluster.slaves[0]
    _admin(slave, f"REVOKE INSERT ON ivle_maint_media FROM {slave.pg.ivle_user}")
    done = preinst(slave)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done)
    assert f"role {slave.pg.ivle_user} may not insert into table ivle_maint_media" in line
    assert "GRANT SELECT, INSERT ON ivle_maint_media" in line
    assert slave.service_running("apache2")


def test_an_installed_record_that_cannot_be_replaced_fails_the_preflight(node_factory: Any):
    """installed.json immutable (chattr +i): the state directory is writable, but
    the record written once the upgrade completes is not; the preflight says so."""
    node, consoles, schema = started(node_factory, baselined=True)
    record = node.state_dir / "installed.json"
    record.write_text('{"version": "1.0", "migrations_dir": "", "migrations": []}\n')
    subprocess.run(["chattr", "+i", str(record)], check=True)
    try:
        done = upgrade(node, source_tree(node, RELEASES["1.1"]))
        line = assert_refused_with_the_site_up(node, done, consoles, schema)
        assert f"{record}: is immutable (chattr +i); refused" in line, line
    finally:
        subprocess.run(["chattr", "-i", str(record)], check=True)


def test_a_record_of_the_installed_version_lost_at_the_end_is_written_by_the_next_run(
        node_factory: Any):
    """The upgrade completed, but installed.json was not written (the run was
    killed there, or the write failed): dpkg --configure -a writes it."""
    node = at_version_1_0(node_factory(users=2, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node)
    assert postinst(node).returncode == 0
    record = node.state_dir / "installed.json"
    record.unlink()  # as a run killed just after the journal's completion leaves it
    again = postinst(node)
    assert again.returncode == 0, again.stderr
    assert "is already complete" in again.stderr
    assert '"version": "1.1"' in record.read_text()


@pytest.mark.parametrize("record", ["schema-hold.json", "media-versions.json"])
def test_a_state_record_the_after_phase_rewrites_that_cannot_be_replaced_fails_the_preflight(
        node_factory: Any, record: str):
    """An immutable schema-hold.json (start-web releases the hold through it)
    or media-versions.json: before, the preflight passed and the postinst
    failed with the site down; now the preflight refuses with it up."""
    node, consoles, schema = started(node_factory, baselined=True)
    path = node.state_dir / record
    path.write_text('{"released": "an earlier upgrade"}\n' if record == "schema-hold.json"
                    else '{"entries": []}\n')
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        done = upgrade(node, source_tree(node, RELEASES["1.1"]))
        line = assert_refused_with_the_site_up(node, done, consoles, schema)
        assert f"{path}: is immutable (chattr +i); refused" in line, line
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)

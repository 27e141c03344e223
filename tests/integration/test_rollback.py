"""A rollback through dpkg's hook calls on a throwaway node (real PostgreSQL,
jails, services): the kept package's preinst and postinst run IVLE's
procedure as a rollback.  (Through real dpkg and apt: the e2e scenarios
rollback and rollback-failed-migration.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest

from ivle_maint.rollback.fingerprint import schema_fingerprint
from ivle_sandbox.releases import DESTRUCTIVE, RELEASES
from support.upgrade_helpers import (
    at_version_1_0,
    cli,
    final_state,
    home_checksums,
    ivle_conf_without_media,
    journal,
    logins,
    marker_keys,
    schema_signature,
    start_cli,
    unpack,
    write_row,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

OLD, NEW = "1.0", "1.1"


def hook(node: Any, *args: str, env: dict[str, str] | None = None) -> Any:
    """ivle-maint hook ARGS, as IVLE's maintainer script calls it under dpkg."""
    return cli(node, "hook", *args, extra_env=env)


def upgrade(node: Any, migrations: dict[str, str] | None = None) -> None:
    done = hook(node, "preinst", "upgrade", "1.0", "1.1")
    assert done.returncode == 0, done.stderr
    unpack(node, "1.1", migrations)
    done = hook(node, "--package-version", "1.1", "postinst", "configure", "1.0")
    assert done.returncode == 0, done.stderr


def downgrade(node: Any, env: dict[str, str] | None = None) -> tuple[Any, Any]:
    """dpkg installing the kept 1.0 over 1.1: 1.0's preinst, unpack, 1.0's postinst."""
    before = hook(node, "preinst", "upgrade", "1.1", "1.0", env=env)
    if before.returncode != 0:
        return before, None
    unpack(node, "1.0")
    return before, hook(node, "--package-version", "1.0", "postinst", "configure", "1.1",
                        env=env)


@pytest.fixture
def both(node_factory):
    return at_version_1_0(node_factory(users=4, consoles=2, role="both"))


def test_an_additive_release_rolls_back_code_only_and_keeps_the_rows(both):
    start = final_state(both)
    homes, conf, schema = home_checksums(both), ivle_conf_without_media(both), \
        schema_signature(both)
    upgrade(both)
    status = cli(both, "status").stdout
    assert f"restore point of {OLD} -> {NEW} (pinned" in status, status
    applied = marker_keys(both)
    write_row(both, "written_after")
    both.ivle_conf.write_text(both.ivle_conf.read_text() + "# changed for 1.1\n")

    before, after = downgrade(both)
    assert before.returncode == 0, before.stderr
    assert after.returncode == 0, after.stderr
    assert "rollback: code only: every migration applied since the restore point is " \
        "additive" in after.stderr, after.stderr
    end = final_state(both)
    assert end["installed"] == OLD and end["template"] == OLD
    assert end["services"] == start["services"]
    assert "written_after" in logins(both)  # nothing users wrote is lost
    assert marker_keys(both) == applied  # the additive migrations stay
    assert schema_signature(both) != schema
    assert home_checksums(both) == homes and ivle_conf_without_media(both) == conf
    assert "# changed for 1.1" not in both.ivle_conf.read_text()  # put back as kept
    assert journal(both, NEW, OLD)["state"] == "complete"
    assert "restore point" not in cli(both, "status").stdout  # rolled back: not pinned
    # The template is the one kept before the rebuild, renamed back.
    assert not list(both.template.parent.glob("*.restore-*"))


def user_schema(node: Any) -> list[tuple[str, str]]:
    return [c for c in schema_signature(node) if not c[0].startswith("ivle_maint_")]


def databases(node: Any) -> list[str]:
    conn = node.pg.connect("postgres")
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        found = [row[0] for row in cur.fetchall()]
    conn.close()
    return found


def test_a_destructive_release_rolls_back_full_only_when_accepted(both):
    schema = schema_signature(both)
    upgrade(both, {**RELEASES["1.1"], **DESTRUCTIVE})
    write_row(both, "written_after")
    refused, _ = downgrade(both)
    assert refused.returncode == 1
    assert "a full rollback replaces the database with the restore point's dump" \
        in refused.stderr and "20100301 (destructive)" in refused.stderr, refused.stderr
    assert final_state(both)["installed"] == NEW and both.service_running("apache2")

    before, after = downgrade(both, env={"IVLE_MAINT_ACCEPT_DATA_LOSS": "1"})
    assert before.returncode == 0, before.stderr
    assert after.returncode == 0, after.stderr
    assert "rows written since the dump would be lost" in after.stderr, after.stderr
    assert "written_after" not in logins(both)  # the dump's rows, as accepted
    # As the dump: 1.0's migrations, recorded by the upgrade's baseline step.
    assert marker_keys(both) == ["20090105", "20090212-01"]
    assert user_schema(both) == [c for c in schema if not c[0].startswith("ivle_maint_")]
    kept = [name for name in databases(both) if name.startswith(f"{both.dbname}_failed_")]
    assert len(kept) == 1
    assert final_state(both)["installed"] == OLD and both.service_running("apache2")


def test_a_downgrade_without_a_point_is_refused_with_the_site_up(both):
    upgrade(both)
    done = cli(both, "commit")
    assert done.returncode == 0 and "committed 1.0 -> 1.1" in done.stderr
    before, _ = downgrade(both)
    assert before.returncode == 1
    assert "a downgrade is a rollback, and this node keeps no pinned restore point" \
        in before.stderr
    assert final_state(both)["installed"] == NEW and both.service_running("apache2")


def test_a_rollback_killed_in_a_step_is_resumed_by_dpkg(both):
    upgrade(both)
    downgrade_preinst_only(both)
    unpack(both, "1.0")
    proc = start_cli(both, "hook", "--package-version", "1.0", "postinst", "configure", "1.1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        steps = journal(both, NEW, OLD).get("steps", {})
        if any(s.get("status") == "running" for s in steps.values()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    again = hook(both, "--package-version", "1.0", "postinst", "configure", "1.1")
    assert again.returncode == 0, again.stderr
    assert final_state(both)["installed"] == OLD
    assert journal(both, NEW, OLD)["state"] == "complete"
    assert both.service_running("apache2")


def downgrade_preinst_only(node: Any) -> None:
    before = hook(node, "preinst", "upgrade", "1.1", "1.0")
    assert before.returncode == 0, before.stderr


def test_the_schema_fingerprint_never_waits_for_a_table_lock(both):
    """It runs in the outage (migrate, writes stopped): a session holding a
    table (an expression index on it) must not hold the site down."""
    conn = both.connect()
    with conn, conn.cursor() as cur:
        cur.execute("CREATE INDEX login_lower ON login (lower(login)) WHERE nick IS NOT NULL")
    holder = both.connect()
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE login IN ACCESS EXCLUSIVE MODE")
    try:
        reader = both.connect()
        started = time.monotonic()
        found = schema_fingerprint(reader)
        waited = time.monotonic() - started
        reader.close()
    finally:
        holder.rollback()
        holder.close()
    assert found is not None and waited < 1.5  # LOCK_WAIT is 2 s: it never waited for one
    again = both.connect()
    assert schema_fingerprint(again) == found  # the same schema, the same value
    again.close()


def test_a_commit_never_descends_into_a_mount_left_in_the_kept_template(tmp_path):
    """The kept template goes as the rollback removes trees (rm -rf
    --one-file-system through the command gate): a filesystem left mounted
    in it is refused with one line, and what it holds stays."""
    from ivle_maint.config import load_settings
    from ivle_maint.errors import MaintError
    from ivle_maint.rollback import point as points

    conf = tmp_path / "maint.conf"
    conf.write_text(f"[node]\nrole = both\n[paths]\nstate = {tmp_path / 'state'}\n"
                    f"backup = {tmp_path / 'backup'}\n")
    settings = load_settings(str(conf))
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    # Where keep.template_aside keeps it (the manifest's gate takes no other).
    aside = tmp_path / f"template.restore-{points.slug(point.upgrade)}"
    mounted = aside / "home" / "alice"
    mounted.mkdir(parents=True)
    point.update(lambda p: setattr(p, "template", {"path": str(tmp_path / "template"),
                                                   "aside": str(aside),
                                                   "inode": str(os.lstat(aside).st_ino)}))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mounted)], check=True)
    try:
        (mounted / "work.py").write_text("print('mine')\n")
        with pytest.raises(MaintError, match=f"could not remove {aside}"):
            points.commit(settings, point)
        assert (mounted / "work.py").read_text() == "print('mine')\n"
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    again = points.for_upgrade(settings, "1.0->1.1@ab")
    assert again is not None and not again.committed  # not let go


def test_a_mount_inside_the_template_is_never_hard_linked_into_the_restore_point(both,
                                                                                tmp_path):
    """A jail mounted (or propagated) into the template: cp -al would take
    a student's files into the kept template, or fail across devices."""
    assert hook(both, "preinst", "upgrade", "1.0", "1.1").returncode == 0
    unpack(both, "1.1")
    student = tmp_path / "student"
    student.mkdir()
    (student / "work.py").write_text("print('mine')\n")
    inside = both.template / "home" / "propagated"
    inside.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(student), str(inside)], check=True)
    try:
        done = hook(both, "--package-version", "1.1", "postinst", "configure", "1.0")
        assert done.returncode == 1
        said = [line for line in done.stderr.splitlines() if "is mounted inside" in line]
        assert said and str(inside) in said[0], done.stderr
        assert not list(both.template.parent.glob("*.restore-*"))
        assert journal(both)["steps"]["rebuild-jail"]["status"] == "failed"
    finally:
        subprocess.run(["umount", str(inside)], check=True)
    inside.rmdir()
    assert cli(both, "rerun").returncode == 0
    assert len(list(both.template.parent.glob("*.restore-*"))) == 1

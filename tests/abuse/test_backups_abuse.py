"""Database dumps under faults: retried failures, a full backup disk, a run
killed during pg_dump.

Each case: a one-line error, the documented exit status, nothing
half-written (no .partial dump, no password file), and the dump that
restores the database as it was before the upgrade is still there.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from abuse_helpers import error_lines, upgraded_state
from ivle_maint.config import load_settings
from ivle_maint.output import RecordingReporter
from ivle_maint.steps import migrations
from ivle_sandbox.releases import NEW, OLD
from upgrade_helpers import (
    RESUME_LINE,
    at_version_1_0,
    cli,
    final_state,
    journal,
    marker_keys,
    postinst,
    preinst,
    set_setting,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

# 20100215 fails when it runs (not when parsed): the two before it apply.
FAILING = {**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"}


def dumps(node: Any) -> list[Path]:
    return sorted(node.backup_dir.glob("*.dump"))


def dump_sql(path: Path) -> str:
    """The dump as SQL text (pg_restore needs no server for that)."""
    done = subprocess.run(["pg_restore", "-f", "-", str(path)], capture_output=True,
                          text=True, check=True)
    return done.stdout


def test_retries_keep_the_dump_from_before_the_upgrade(site: Any) -> None:
    """Six failed `dpkg --configure -a` with backup_keep = 1: the first dump stays."""
    set_setting(site, "database", "backup_keep", "1")
    assert preinst(site).returncode == 0
    unpack(site, migrations=FAILING)
    first = postinst(site)
    assert first.returncode == 1
    (before_upgrade,) = dumps(site)
    assert "before-20100201-01" in before_upgrade.name
    assert f"backup taken before this run: {before_upgrade}" in first.stderr
    for _ in range(5):
        again = postinst(site)
        assert again.returncode == 1 and RESUME_LINE in again.stderr
        (line,) = error_lines(again)
        # The first error's restore command still works: its dump is there.
        assert f"the database before this upgrade: {before_upgrade} (restore: " in line
    # One more dump only: after the first attempt applied two migrations.
    assert len(dumps(site)) == 2
    assert before_upgrade.exists()
    assert "upgrade_notice" not in dump_sql(before_upgrade)
    assert "upgrade_notice" in dump_sql(dumps(site)[1])
    # A manual dump (with rotation) does not delete it either.
    settings = load_settings(str(site.maint_conf))
    migrations.backup_now(settings, RecordingReporter())
    assert before_upgrade.exists()

    status = cli(site, "status")
    assert f"  database before this upgrade: {before_upgrade}" in status.stdout
    restore = next(line for line in status.stdout.splitlines() if "restore with:" in line)
    assert shlex.split(restore.split("restore with: ", 1)[1])[-1] == str(before_upgrade)

    unpack(site)  # the corrected package
    assert cli(site, "rerun").returncode == 0
    assert journal(site)["state"] == "complete"
    # The last completed upgrade keeps its dump; the retries' are rotated as usual.
    migrations.backup_now(settings, RecordingReporter())
    assert before_upgrade in dumps(site) and len(dumps(site)) == 2
    assert f"database before this upgrade: {before_upgrade}" in cli(site, "status").stdout


def test_full_backup_disk_is_one_line_and_nothing_half_written(
        node_factory: Any, site: Any, tmp_path: Path) -> None:
    """The disk fills between preinst and postinst: pg_dump fails, nothing is migrated."""
    from ivle_sandbox import mountns

    reference = upgraded_state(at_version_1_0(node_factory(users=3, consoles=1, role="both")))

    assert preinst(site).returncode == 0
    unpack(site)
    mountns.require_private(site.backup_dir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                    str(site.backup_dir)], check=True)
    try:
        filler = site.backup_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - 8192)  # 8k free: pg_dump starts
        keys = marker_keys(site)
        failed = postinst(site)
        assert failed.returncode == 1
        (line,) = error_lines(failed)
        assert "pg_dump of database" in line and "No space left on device" in line
        assert RESUME_LINE in failed.stderr
        assert sorted(p.name for p in site.backup_dir.iterdir()) == ["filler"]  # no .partial
        assert marker_keys(site) == keys  # nothing migrated without a backup
        filler.unlink()
        done = cli(site, "rerun")
        assert done.returncode == 0, done.stderr
    finally:
        mountns.umount(site.backup_dir)
    assert final_state(site) == reference  # the tmpfs is no jail mount


def test_a_killed_dumps_leftovers_are_removed_by_the_next(site: Any) -> None:
    """A .partial dump and an old-style password file, as a SIGKILL left them."""
    settings = load_settings(str(site.maint_conf))
    site.backup_dir.mkdir(parents=True, exist_ok=True)
    stale = site.backup_dir / f".{site.dbname}-20200101T000000.000000Z-x.dump.partial"
    stale.write_bytes(b"PGDMP half")
    fd, passfile = tempfile.mkstemp(prefix="ivle-maint-pgpass-")
    os.close(fd)
    # A dump still being written (a pg_dump that outlived its run) holds the flock.
    busy = site.backup_dir / f".{site.dbname}-20200102T000000.000000Z-y.dump.partial"
    busy_fd = os.open(busy, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(busy_fd, fcntl.LOCK_EX)
    try:
        made = migrations.backup_now(settings, RecordingReporter())
        assert not stale.exists() and not Path(passfile).exists()
        assert busy.exists()
    finally:
        os.close(busy_fd)
    assert made.exists()
    # No password file is written for pg_dump, anywhere in the temporary directory.
    assert not list(Path(tempfile.gettempdir()).glob("ivle-maint-pgpass-*"))


def test_the_next_run_removes_leftovers_even_without_dumping(site: Any) -> None:
    """dpkg's next preinst (no dump in it) already clears what a SIGKILL left."""
    site.backup_dir.mkdir(parents=True, exist_ok=True)
    stale = site.backup_dir / f".{site.dbname}-20200101T000000.000000Z-x.dump.partial"
    stale.write_bytes(b"PGDMP half")
    fd, passfile = tempfile.mkstemp(prefix="ivle-maint-pgpass-")
    os.close(fd)
    assert preinst(site).returncode == 0
    assert not stale.exists() and not Path(passfile).exists()
    assert dumps(site) == []

"""Time (gates/clock.py): nothing depends on the wall clock moving forward.

A clock that was ahead (a wrong RTC, a bad NTP source) leaves dumps, logs
and journals stamped in the future; once it is set right, a real upgrade
must still keep the dump it just took (the only one from before it), keep
its own log, and report a web-down time that is never negative.  The
fault is injected as such a clock leaves it: files with future names and
mtimes, a journal with future wall times, then a real run.  The property
versions (generated clock jumps) are in tests/unit/gates/test_clock.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ivle_maint.config import load_settings
from ivle_maint.db import backup, migrations, pins
from ivle_maint.output import RecordingReporter
from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import error_lines
from support.upgrade_helpers import (
    RESUME_LINE,
    cli,
    journal,
    postinst,
    preinst,
    set_setting,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

FUTURE = 4_102_444_800.0  # 2100-01-01: where a clock that was ahead put things
# 20100215 fails when it runs (not when parsed): the two before it apply.
FAILING = {**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"}


def dumps(node: Any) -> list[Path]:
    return sorted(node.backup_dir.glob("*.dump"))


def dump_sql(path: Path) -> str:
    """The dump as SQL text (pg_restore needs no server for that)."""
    done = subprocess.run(["pg_restore", "-f", "-", str(path)], capture_output=True,
                          text=True, check=True)
    return done.stdout


def future_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (FUTURE, FUTURE))
    return path


def test_a_clock_that_was_ahead_never_rotates_away_the_dump_just_taken(site: Any) -> None:
    """Dumps stamped 2099/2100 (by this version, numbered, and by an older
    one, not): the upgrade's dump is the newest by order and stays."""
    set_setting(site, "database", "backup_keep", "2")
    site.backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(site.backup_dir, 0o700)
    db = site.dbname
    legacy = [future_file(site.backup_dir / f"{db}-2099010{i}T000000.000000Z-manual.dump",
                          b"PGDMP old") for i in (1, 2)]
    numbered = [future_file(site.backup_dir / f"{db}-2100010{i}T000000.000000Z-manual"
                                              f".n00000{i}.dump", b"PGDMP old")
                for i in (1, 2)]
    assert preinst(site).returncode == 0
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert journal(site)["state"] == "complete"
    (upgrade,) = pins.load(site.backup_dir).values()
    taken = site.backup_dir / upgrade.first
    assert taken.exists()
    assert taken.name.endswith(".n000003.dump")
    assert "upgrade_notice" not in dump_sql(taken)  # from before the migrations
    # The newest two by order: the last numbered one and the one just taken.
    assert backup.backups(site.backup_dir, db) == [numbered[1], taken]
    assert not any(p.exists() for p in [*legacy, numbered[0]])


def test_logs_of_a_clock_that_was_ahead_never_push_out_the_new_ones(site: Any) -> None:
    """[logs] keep = 3 and four logs from 2100: each run's log outlives the
    next run's rotation."""
    set_setting(site, "logs", "keep", "3")
    for i in range(4):
        future_file(site.maint_log_dir / f"upgrade-1.0_to_1.1-2100010{i}T000000Z.log",
                    b"from the future\n")
    old = set(site.maint_log_dir.iterdir())
    assert preinst(site).returncode == 0
    (before,) = [p for p in set(site.maint_log_dir.iterdir()) - old  # not a .gz made of one
                 if p.name.endswith(".log")]
    unpack(site)
    assert postinst(site).returncode == 0
    assert before.exists()  # the previous run's log stays, plain
    names = sorted(p.name for p in site.maint_log_dir.iterdir())
    # The preinst's log and the postinst's, and the newest of the old ones.
    assert names == [before.name, names[1], "upgrade-1.0_to_1.1-21000103T000000Z.log.gz"]
    assert before.name.endswith(".n000001.log") and names[1].endswith(".n000002.log")


def _shift_stop_web(site: Any, seconds: float, boot: str | None = None) -> None:
    """As a clock that was SECONDS ahead when stop-web ran leaves the journal."""
    path = site.state_dir / "journal" / "1.0_to_1.1.json"
    data = json.loads(path.read_text())
    data["steps"]["stop-web"]["started"] += seconds
    data["steps"]["stop-web"]["finished"] += seconds
    if boot is not None and "boot" in data["steps"]["stop-web"]:
        data["steps"]["stop-web"]["boot"] = boot  # and the machine rebooted since
    path.write_text(json.dumps(data))


def _down_line(done: subprocess.CompletedProcess[str]) -> str:
    (line,) = [ln for ln in done.stderr.splitlines() if "web service down for" in ln]
    return line


def test_a_clock_set_back_between_the_scripts_never_gives_a_negative_downtime(
        site: Any) -> None:
    assert preinst(site).returncode == 0
    _shift_stop_web(site, 86_400)
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    seconds = _down_line(done).split("web service down for ", 1)[1]
    assert seconds.endswith("s") and float(seconds[:-1]) >= 0  # the monotonic clock's


def test_a_reboot_with_inconsistent_clocks_says_unknown_not_a_negative_downtime(
        site: Any) -> None:
    assert preinst(site).returncode == 0
    _shift_stop_web(site, 86_400, boot="a boot before the postinst")
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert "web service down for an unknown time" in _down_line(done)


def test_retries_keep_the_dump_from_before_the_upgrade(site: Any) -> None:
    """Six failed `dpkg --configure -a` with backup_keep = 1: the first dump stays."""
    set_setting(site, "database", "backup_keep", "1")
    assert preinst(site).returncode == 0
    unpack(site, migrations=FAILING)
    first = postinst(site)
    assert first.returncode == 1
    (before_upgrade,) = dumps(site)
    assert "before-20100201-01" in before_upgrade.name
    assert f"the database before this upgrade: {before_upgrade}" in first.stderr
    for _ in range(5):
        again = postinst(site)
        assert again.returncode == 1 and RESUME_LINE in again.stderr
        (line,) = error_lines(again)
        # The first error's dump is still named, with the way back.
        assert f"the database before this upgrade: {before_upgrade} (to go back, " in line
        assert "ivle-maint rollback" in line
    # One more dump only: after the first attempt applied two migrations.
    assert len(dumps(site)) == 2
    assert before_upgrade.exists()
    assert "upgrade_notice" not in dump_sql(before_upgrade)
    assert "upgrade_notice" in dump_sql(backup.backups(site.backup_dir, site.dbname)[1])
    # A manual dump (with rotation) does not delete it either.
    settings = load_settings(str(site.maint_conf))
    migrations.backup_now(settings, RecordingReporter())
    assert before_upgrade.exists()

    status = cli(site, "status")
    assert f"  database before this upgrade: {before_upgrade}" in status.stdout
    assert "go back (package and database): ivle-maint rollback" in status.stdout

    unpack(site)  # the corrected package
    assert cli(site, "rerun").returncode == 0
    assert journal(site)["state"] == "complete"
    # The last completed upgrade keeps its dump; the retries' are rotated as usual.
    migrations.backup_now(settings, RecordingReporter())
    assert before_upgrade in dumps(site) and len(dumps(site)) == 2
    assert f"database before this upgrade: {before_upgrade}" in cli(site, "status").stdout


def test_a_journal_made_by_a_clock_that_was_ahead_still_counts_the_migrations_applied(
        site: Any) -> None:
    """The journal's wall times say 2100, the database server's say now: the
    summary of the rerun still counts the two migrations the failed run
    applied (by their keys, recorded before they applied), not only its own."""
    assert preinst(site).returncode == 0
    path = site.state_dir / "journal" / "1.0_to_1.1.json"
    data = json.loads(path.read_text())
    data["created"] = FUTURE
    path.write_text(json.dumps(data))
    unpack(site, migrations=FAILING)
    assert postinst(site).returncode == 1
    unpack(site)
    done = cli(site, "rerun")
    assert done.returncode == 0, done.stderr
    new_keys = sorted(k.removesuffix(".sql") for k in NEW)
    assert f"migrations applied: 3 {' '.join(new_keys)}" in done.stderr

"""ivle-maint db status|baseline|migrate|backup as an administrator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ivle_maint import cli
from ivle_maint.db import pgparse
from ivle_sandbox.postgres import free_port
from support.migration_site import Site

pytestmark = pytest.mark.needs_postgres

REPO = Path(__file__).resolve().parents[2]


def resumed(site: Site, *argv: str) -> str:
    """The resume line of a `run` of ARGV: with its --config too (cli.resume_line)."""
    return " ".join(["ivle-maint", "--config", str(site.root / "etc" / "ivle-maint.conf"),
                     "db", *argv])


def run(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    conf = site.root / "etc" / "ivle-maint.conf"
    status = cli.main(["--config", str(conf), "db", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_baseline_status_migrate_status(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(site, capsys, "status")
    assert status == 0
    assert f"database {site.dbname}: no marker table, 0 applied" in out
    assert "has tables but no marker, so every migration shows as pending" in out
    assert "records the installed version's migrations itself" in out
    assert f"'{resumed(site, 'baseline', 'THROUGH')}'" in out  # the run's --config too

    status, out, err = run(site, capsys, "migrate")
    assert status == 1
    assert err.startswith("ivle-maint: error: database ") and "db baseline THROUGH" in err
    assert err.count("\n") == 2 and f"resume with: {resumed(site, 'migrate')}\n" in err

    site.run_sql((site.migrations / "20090105.sql").read_text())
    status, out, err = run(site, capsys, "baseline", "20090105.sql")
    assert status == 0
    assert "recorded 1 migration(s) as applied, without running them" in err

    status, out, err = run(site, capsys, "status")
    lines = out.splitlines()
    assert lines[1].startswith(f"migrations: {site.migrations} (7 shipped)")
    assert lines[2].startswith("applied      20090105     ") and "baseline on testnode" in lines[2]
    assert lines[3].startswith("pending      20090105-01")

    status, out, err = run(site, capsys, "migrate", "--no-backup")
    assert status == 0, err
    assert "applied 20090401-01 (no-transaction)" in err
    assert "applied 6 migration(s)" in err

    site.add_migration("20090110-01.sql", "SELECT 1;\n")
    (site.migrations / "20090105-01.sql").write_text("-- edited\n")
    status, out, err = run(site, capsys, "status")
    states = {line.split()[1]: line.split()[0] for line in out.splitlines()[2:]}
    assert states["20090105-01"] == "changed"
    assert states["20090110-01"] == "out-of-order"
    assert states["20090212-01"] == "applied"


def test_dry_run_shows_classification_and_sql_and_changes_nothing(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    run(site, capsys, "baseline", "20090105")
    site.run_sql((site.migrations / "20090105.sql").read_text())
    status, out, err = run(site, capsys, "migrate", "--dry-run")
    assert status == 0, err
    assert "-- 20090105-01: " in out
    assert "-- mode own-transaction: its own BEGIN/COMMIT (lines 2, 14) replaced" in out
    assert "-- mode no-transaction: opted out" in out
    assert "-- runs outside a transaction: CREATE INDEX CONCURRENTLY" in out
    if pgparse.available():
        assert "-- class additive: line 4: CREATE TABLE project" in out
    assert "CREATE TABLE project (" in out and "$$ LANGUAGE plpgsql;" in out
    assert out.count("BEGIN;\n") == 5  # one per transactional migration, none for the opt-out
    assert site.marker() == {"20090105": "baseline"}
    assert not site.table_exists("project")


def test_dry_run_lists_every_problem_then_fails(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    run(site, capsys, "baseline", "20090401-01")
    site.add_migration("20100101-01.sql", "VACUUM;\n")
    site.add_migration("20100102-01.sql", "SELECT 'x;\n")
    status, out, err = run(site, capsys, "migrate", "--dry-run")
    assert status == 1
    blocked = [line for line in out.splitlines() if line.startswith("-- blocked: ")]
    assert len(blocked) == 2
    assert "VACUUM cannot run inside a transaction" in blocked[0]
    assert f"(and 1 more: see '{resumed(site, 'migrate', '--dry-run')}')" in err


def test_accept_changed_and_allow_out_of_order_options(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    run(site, capsys, "baseline", "20090401-01")
    (site.migrations / "20090105.sql").write_text("-- edited\n")
    site.add_migration("20090110-01.sql", "SELECT 1;\n")
    status, _out, err = run(site, capsys, "migrate", "--no-backup")
    assert status == 1 and "--accept-changed 20090105" in err and "(and 1 more" in err
    site.settings(backup=True)
    status, _out, err = run(
        site, capsys, "migrate", "--accept-changed", "20090105", "--allow-out-of-order"
    )
    assert status == 0, err
    assert "accepted the changed file of 20090105" in err
    assert "applied 20090110-01 (transaction)" in err
    assert "backup: " in err  # [database] backup = true, and no --no-backup


def test_backup_command(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = run(site, capsys, "backup")
    assert status == 0
    (dump,) = site.backups.iterdir()
    assert f"backup: {dump} (to put it back: sudo -u postgres createdb " in err
    assert "--clean" not in err


def test_wrong_password_from_the_real_command(site: Site) -> None:
    secret = "n0t-the-Passw0rd"
    site.settings(password=secret)
    done = subprocess.run(
        [sys.executable, "-m", "ivle_maint", "db", "migrate"],
        env={**os.environ, "IVLE_MAINT_CONF": str(site.root / "etc" / "ivle-maint.conf")},
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"ivle-maint: error: cannot connect to database {site.dbname} as ivle at "
        f'127.0.0.1:{site.pg.port}: password authentication failed for user "ivle"'
    ]
    assert secret not in done.stdout + done.stderr


def test_server_down_prints_resume(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.settings(port=free_port(), wait_timeout=0.5)
    status, _out, err = run(site, capsys, "migrate")
    assert status == 1
    lines = err.splitlines()
    assert lines[-1] == f"ivle-maint: resume with: {resumed(site, 'migrate')}"
    assert lines[-2].startswith("ivle-maint: error: PostgreSQL did not accept connections")

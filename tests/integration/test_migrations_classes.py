"""ivle-maint db classify, a declared class refused or accepted, and the
accepted override in the marker row (doc/migrations.md)."""

from __future__ import annotations

import pytest

from ivle_maint import cli
from ivle_maint.db import pgparse
from support.migration_site import Site

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.skipif(not pgparse.available(), reason="pglast is not installed"),
]

DROPS_BUT_SAYS_ADDITIVE = "-- ivle-maint: additive\nALTER TABLE login DROP COLUMN nick;\n"


def run(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    conf = site.root / "etc" / "ivle-maint.conf"
    status = cli.main(["--config", str(conf), "db", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_classify_lists_the_pending_migrations_and_the_release_class(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    run(site, capsys, "baseline", "20090212-02")
    status, out, err = run(site, capsys, "classify")
    assert status == 0, err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["20090301-01", "additive"], ["20090315-01", "destructive"],
        ["20090401-01", "additive"]]
    assert "line 4: UPDATE of existing rows (project)" in lines[1]
    assert lines[3] == "release class: destructive (decided by 20090315-01)"

    status, out, _ = run(site, capsys, "classify", "--all")
    assert status == 0
    assert len(out.splitlines()) == 8  # seven shipped and the release line


def test_a_milder_declared_class_blocks_migrate_until_accepted_and_the_row_says_who(
        site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    run(site, capsys, "baseline", "20090401-01")
    site.add_migration("20100101-01.sql", DROPS_BUT_SAYS_ADDITIVE)
    status, _, err = run(site, capsys, "migrate", "--no-backup")
    assert status == 1
    first = err.splitlines()[0]
    assert first == ("ivle-maint: error: migration 20100101-01: its header declares additive "
                     "but it is destructive (line 2: ALTER TABLE login DROP COLUMN nick: the "
                     "old code may use it): correct the header, or accept it with --accept-class "
                     "20100101-01")
    assert (f"resume with: ivle-maint --config {site.root / 'etc' / 'ivle-maint.conf'} db "
            "migrate --no-backup --accept-class 20100101-01") in err
    assert "nick" in site.columns("login")

    monkeypatch.setenv("SUDO_USER", "alice")
    status, _, err = run(site, capsys, "migrate", "--no-backup", "--accept-class", "20100101-01")
    assert status == 0, err
    assert "nick" not in site.columns("login")
    (row,) = site.query("SELECT class_override, class_override_by FROM ivle_maint_migrations "
                        "WHERE key = '20100101-01'")
    assert row == ("accepted additive, found destructive (line 2: ALTER TABLE login DROP COLUMN "
                   "nick: the old code may use it)", "alice")
    assert site.query("SELECT count(*) FROM ivle_maint_migrations "
                      "WHERE class_override IS NOT NULL") == [(1,)]
    status, out, _ = run(site, capsys, "status")
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if "20100101-01" in line)
    assert lines[at + 1].strip() == ("accepted additive, found destructive (line 2: ALTER "
                                     "TABLE login DROP COLUMN nick: the old code may use "
                                     "it), accepted by alice")


def test_accept_class_naming_no_such_migration_blocks_migrate(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    run(site, capsys, "baseline", "20090401-01")
    site.add_migration("20100101-01.sql", "CREATE TABLE n (a int);\n")
    status, _, err = run(site, capsys, "migrate", "--no-backup", "--accept-class", "20100101-01")
    assert status == 1
    assert ("--accept-class 20100101-01: not a pending migration whose header declares a "
            "milder class than found") in err
    assert not site.table_exists("n")


def test_an_older_marker_table_gains_the_override_columns(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    run(site, capsys, "baseline", "20090401-01")
    site.query("ALTER TABLE ivle_maint_migrations DROP COLUMN class_override, "
               "DROP COLUMN class_override_by")
    status, _, err = run(site, capsys, "status")
    assert status == 0, err  # the older table reads as before
    site.add_migration("20100101-01.sql", "CREATE TABLE n (a int);\n")
    status, _, err = run(site, capsys, "migrate", "--no-backup")
    assert status == 0, err
    assert site.columns("ivle_maint_migrations")[-2:] == ["class_override", "class_override_by"]

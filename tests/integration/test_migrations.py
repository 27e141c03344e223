"""Applying migrations on a real PostgreSQL server: order, atomicity, marker,
baseline, changed and out-of-order files, preflight, backups."""

from __future__ import annotations

import os
import stat
import subprocess
from typing import Any

import pytest

from ivle_maint import __version__
from ivle_maint.db import classify as cls
from ivle_maint.db import migrations
from ivle_maint.db.sqlsplit import split
from ivle_maint.errors import MaintError
from ivle_sandbox import schema
from support.migration_site import Site, create_empty_database

pytestmark = pytest.mark.needs_postgres

ALL = [
    "20090105",
    "20090105-01",
    "20090212-01",
    "20090212-02",
    "20090301-01",
    "20090315-01",
    "20090401-01",
]


def history(site: Site, keys: list[str]) -> None:
    """Bring the database to where IVLE's upgrade procedure, by hand, left it."""
    for key in keys:
        text = (site.migrations / f"{key}.sql").read_text()
        if split(text):  # psycopg2 refuses a text of comments only
            site.run_sql(text)


def start_from(site: Site, through: str) -> None:
    """An existing IVLE site: migrations up to through applied by hand, baselined."""
    keys = site.keys()
    history(site, keys[: keys.index(through) + 1])
    migrations.record_baseline(site.settings(), through, site.reporter)


# -- applying --------------------------------------------------------------


def test_apply_all_in_order_on_a_baselined_site(site: Site) -> None:
    start_from(site, "20090105")
    result = migrations.apply_migrations(site.settings(), site.reporter, package_version="2.0-1")
    assert [a.key for a in result.applied] == ALL[1:]
    # Each ran in its own transaction, in order: applied_at is the transaction start.
    rows = site.query(
        "SELECT key, mode, host, ivle_maint_version, package_version, duration >= 0 "
        "FROM ivle_maint_migrations WHERE mode <> 'baseline' ORDER BY applied_at"
    )
    assert [r[0] for r in rows] == ALL[1:]
    assert {r[2:] for r in rows} == {("testnode", __version__, "2.0-1", True)}
    assert dict((r[0], r[1]) for r in rows)["20090401-01"] == cls.NO_TRANSACTION
    assert dict((r[0], r[1]) for r in rows)["20090105-01"] == cls.OWN_TRANSACTION
    # What the files did, including their E'' strings and quoted identifiers.
    assert site.query('SELECT synopsis, "url;legacy" FROM project') == [
        ("Say hello;\nthen say it's done.", "it's; legacy")
    ]
    assert site.query("SELECT subj_name FROM subject WHERE subj_code = 'INFO20003'") == [
        ("Programmers' Pleasures; Part 1",)
    ]
    assert site.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'login_email_idx'::regclass"
    ) == [(True,)]
    with pytest.raises(Exception, match="project name may not contain"):
        site.query("INSERT INTO project (offeringid, name) VALUES (1, 'a;b')")
    assert any(
        line.startswith("applied 20090212-01 (own-transaction)") for line in site.reporter.lines
    )


def test_second_run_is_a_no_op(site: Site) -> None:
    start_from(site, "20090105")
    migrations.apply_migrations(site.settings(), site.reporter)
    again = migrations.apply_migrations(site.settings(backup=True), site.reporter)
    assert again.up_to_date and again.applied == [] and again.backup is None
    assert not site.backups.exists() or not any(site.backups.iterdir())
    assert len(site.marker()) == len(ALL)


def test_empty_database_gets_every_migration(site: Site, postgres: Any) -> None:
    empty = Site(postgres, site.root, site.dbname + "_empty")
    create_empty_database(postgres, empty.dbname)
    try:
        for path in site.migrations.glob("*.sql"):
            path.unlink()
        site.add_migration("20100101-01.sql", "CREATE TABLE t (x int);\n")
        site.add_migration("20100101-02.sql", "BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT;\n")
        result = migrations.apply_migrations(empty.settings(), empty.reporter)
        assert [a.key for a in result.applied] == ["20100101-01", "20100101-02"]
        assert empty.query("SELECT x FROM t") == [(1,)]
        assert empty.marker() == dict.fromkeys(["20100101-01", "20100101-02"], cls.TRANSACTION) | {
            "20100101-02": cls.OWN_TRANSACTION
        }
    finally:
        schema.drop_database(postgres, empty.dbname)


def test_failure_mid_migration_leaves_neither_changes_nor_marker(site: Site) -> None:
    start_from(site, "20090401-01")
    site.add_migration("20100101-01.sql", "ALTER TABLE login ADD COLUMN a1 int;\n")
    bad = site.add_migration(
        "20100102-01.sql",
        "BEGIN;\nCREATE TABLE half (x int);\nINSERT INTO half VALUES (1);\n"
        "UPDATE login SET a1 = 1 / 0;\nCOMMIT;\n",
    )
    site.add_migration("20100103-01.sql", "ALTER TABLE login ADD COLUMN a3 int;\n")
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(), site.reporter)
    message = str(info.value)
    assert f"migration 20100102-01 failed at {bad}:4: division by zero" in message
    assert "nothing of 20100102-01 was applied" in message
    assert "1 earlier migration(s) of this run stay applied" in message
    assert info.value.resume == "ivle-maint db migrate"
    assert "\n" not in message
    marker = site.marker()
    assert "20100101-01" in marker and "20100102-01" not in marker and "20100103-01" not in marker
    assert "a1" in site.columns("login") and "a3" not in site.columns("login")
    assert not site.table_exists("half")
    # Fixed, it resumes where it stopped.
    bad.write_text("CREATE TABLE half (x int);\n")
    result = migrations.apply_migrations(site.settings(), site.reporter)
    assert [a.key for a in result.applied] == ["20100102-01", "20100103-01"]


def test_failure_writing_the_marker_row_rolls_back_the_migration(site: Site) -> None:
    start_from(site, "20090401-01")
    # A trigger makes the marker insert for one key fail after its statements ran.
    site.run_sql(
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
        "IF NEW.key = '20100101-01' THEN RAISE EXCEPTION 'marker refused'; END IF; "
        "RETURN NEW; END; $$ LANGUAGE plpgsql;"
        "CREATE TRIGGER refuse BEFORE INSERT ON ivle_maint_migrations "
        "FOR EACH ROW EXECUTE FUNCTION refuse();"
    )
    site.add_migration("20100101-01.sql", "BEGIN;\nCREATE TABLE own_tx (x int);\nCOMMIT;\n")
    with pytest.raises(MaintError, match="recording it failed: marker refused"):
        migrations.apply_migrations(site.settings(), site.reporter)
    # Its own COMMIT was stripped: the table went with the marker row.
    assert not site.table_exists("own_tx")
    assert "20100101-01" not in site.marker()


def test_no_transaction_file_failure_keeps_what_ran_and_says_so(site: Site) -> None:
    start_from(site, "20090401-01")
    site.add_migration(
        "20100101-01.sql",
        "-- ivle-maint: no-transaction\nCREATE INDEX CONCURRENTLY login_nick_idx ON login (nick);\n"
        "CREATE INDEX CONCURRENTLY bad_idx ON no_such_table (x);\n",
    )
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(), site.reporter)
    assert 'relation "no_such_table" does not exist' in str(info.value)
    assert "runs without a transaction (no-transaction)" in str(info.value)
    assert site.query("SELECT to_regclass('login_nick_idx') IS NOT NULL") == [(True,)]
    assert "20100101-01" not in site.marker()


def test_no_transaction_file_left_open_is_rolled_back(site: Site) -> None:
    start_from(site, "20090401-01")
    site.add_migration(
        "20100101-01.sql", "-- ivle-maint: no-transaction\nBEGIN;\nCREATE TABLE open_tx (x int);\n"
    )
    with pytest.raises(MaintError, match="left a transaction open"):
        migrations.apply_migrations(site.settings(), site.reporter)
    assert not site.table_exists("open_tx")
    assert "20100101-01" not in site.marker()


# -- baseline and the unmarked database -------------------------------------


def test_populated_database_without_marker_is_refused(site: Site) -> None:
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(), site.reporter)
    message = str(info.value)
    assert f"database {site.dbname} has tables (public.enrolment" in message
    assert "ivle-maint db baseline THROUGH" in message
    assert site.marker() == {}  # not even the marker table
    assert "notify_email" not in site.columns("login")


def test_baseline_records_without_running(site: Site) -> None:
    result = migrations.record_baseline(site.settings(), "20090212-01", site.reporter)
    assert result.recorded == ["20090105", "20090105-01", "20090212-01"]
    assert site.marker() == dict.fromkeys(result.recorded, "baseline")
    assert not site.table_exists("project")  # nothing ran
    checksum = site.query("SELECT checksum FROM ivle_maint_migrations WHERE key = '20090105'")
    import hashlib

    expected = hashlib.sha256((site.migrations / "20090105.sql").read_bytes()).hexdigest()
    assert checksum == [(expected,)]
    st = migrations.status(site.settings())
    assert [m.key for m in st.pending] == ALL[3:]
    assert st.out_of_order == [] and st.changed == []


def test_baseline_again_is_a_no_op_and_more_needs_force(site: Site) -> None:
    migrations.record_baseline(site.settings(), "20090105-01", site.reporter)
    again = migrations.record_baseline(site.settings(), "20090105", site.reporter)
    assert again.recorded == [] and again.already == ["20090105"]
    with pytest.raises(MaintError, match=r"already records 2 migration.*use --force"):
        migrations.record_baseline(site.settings(), "20090212-01", site.reporter)
    skipped = migrations.record_baseline(site.settings(), "20090212-01", when_unmarked=True)
    assert skipped.skipped and len(site.marker()) == 2
    forced = migrations.record_baseline(site.settings(), "20090212-01", force=True)
    assert forced.recorded == ["20090212-01"]


def test_baseline_from_a_list_of_files(site: Site, tmp_path: Any) -> None:
    old = tmp_path / "old-version"
    old.mkdir()
    for key in ALL[:2]:
        (old / f"{key}.sql").write_bytes((site.migrations / f"{key}.sql").read_bytes())
    history(site, ALL[:2])
    result = migrations.record_baseline(site.settings(), sorted(old.iterdir()), site.reporter)
    assert result.recorded == ALL[:2]
    applied = migrations.apply_migrations(site.settings(), site.reporter)
    assert [a.key for a in applied.applied] == ALL[2:]


def test_baseline_through_unknown_key_is_an_error(site: Site) -> None:
    with pytest.raises(MaintError, match="no migration 20200101-01"):
        migrations.record_baseline(site.settings(), "20200101-01", site.reporter)
    assert site.marker() == {}


# -- changed and out-of-order files ------------------------------------------


def test_changed_file_blocks_until_accepted(site: Site) -> None:
    start_from(site, "20090401-01")
    changed = site.migrations / "20090105-01.sql"
    changed.write_text(changed.read_text() + "-- a comment added after release\n")
    site.add_migration("20100101-01.sql", "ALTER TABLE login ADD COLUMN later int;\n")
    st = migrations.status(site.settings())
    assert [c.key for c in st.changed] == ["20090105-01"]
    with pytest.raises(MaintError, match=r"20090105-01 was applied but .* has changed since") as e:
        migrations.apply_migrations(site.settings(), site.reporter)
    assert "--accept-changed 20090105-01" in str(e.value)
    assert "later" not in site.columns("login")
    with pytest.raises(MaintError, match="--accept-changed 20090105: not an applied migration"):
        migrations.apply_migrations(site.settings(), site.reporter, accept_changed=["20090105"])
    result = migrations.apply_migrations(site.settings(), site.reporter,
                                         accept_changed=["20090105-01"])
    assert result.accepted == ["20090105-01"]
    assert [a.key for a in result.applied] == ["20100101-01"]
    note = site.query("SELECT note FROM ivle_maint_migrations WHERE key = '20090105-01'")[0][0]
    assert note.startswith("changed file accepted (sha256 was ")
    assert migrations.status(site.settings()).changed == []


def test_out_of_order_blocks_unless_allowed(site: Site) -> None:
    start_from(site, "20090401-01")
    site.add_migration("20090201-01.sql", "ALTER TABLE login ADD COLUMN late int;\n")
    st = migrations.status(site.settings())
    assert [m.key for m in st.out_of_order] == ["20090201-01"]
    with pytest.raises(
        MaintError, match=r"20090201-01 are older than the newest applied \(20090401-01\)"
    ):
        migrations.apply_migrations(site.settings(), site.reporter)
    assert "late" not in site.columns("login")
    result = migrations.apply_migrations(site.settings(), site.reporter, allow_out_of_order=True)
    assert [a.key for a in result.applied] == ["20090201-01"]
    assert "late" in site.columns("login")


# -- preflight ----------------------------------------------------------------


def test_preflight_classifies_pending_without_changing_anything(site: Site) -> None:
    start_from(site, "20090105-01")
    plan = migrations.preflight(site.settings())
    assert [(c.key, c.mode) for c in plan.pending] == [
        ("20090212-01", cls.OWN_TRANSACTION),
        ("20090212-02", cls.TRANSACTION),
        ("20090301-01", cls.TRANSACTION),
        ("20090315-01", cls.OWN_TRANSACTION),
        ("20090401-01", cls.NO_TRANSACTION),
    ]
    assert plan.ok
    assert len(site.marker()) == 2 and not site.table_exists("login_email_idx")


def test_preflight_refuses_a_broken_file_before_anything_runs(site: Site) -> None:
    start_from(site, "20090401-01")
    site.add_migration("20100101-01.sql", "ALTER TABLE login ADD COLUMN ok int;\n")
    site.add_migration("20100102-01.sql", "UPDATE login SET nick = 'unterminated;\n")
    site.add_migration("20100103-01.sql", "VACUUM login;\n")
    with pytest.raises(MaintError) as info:
        migrations.preflight(site.settings())
    assert "20100102-01.sql: line 1: unterminated quoted string (and 1 more" in str(info.value)
    plan = migrations.preflight(site.settings(), check=False)
    assert len(plan.problems) == 2 and "VACUUM cannot run inside a transaction" in plan.problems[1]
    # migrate runs the same checks first: the good file before them is not applied.
    with pytest.raises(MaintError, match="unterminated quoted string"):
        migrations.apply_migrations(site.settings(), site.reporter)
    assert "ok" not in site.columns("login")


# -- backups ------------------------------------------------------------------


def pg_restore(site: Site, postgres: Any, dump: Any, into: str) -> None:
    create_empty_database(postgres, into)
    done = subprocess.run(
        ["pg_restore", "--no-owner", f"--role={postgres.ivle_user}", "-h", str(postgres.socket_dir),
         "-p", str(postgres.port), "-U", "postgres", "-d", into, str(dump)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_backup_before_migrating_is_private_rotated_and_restorable(
    site: Site, postgres: Any
) -> None:
    start_from(site, "20090105")
    before_rows = site.query("SELECT login, unixid FROM login ORDER BY 1")
    settings = site.settings(backup=True, backup_keep=2)
    first = migrations.apply_migrations(settings, site.reporter)
    assert first.backup is not None and first.backup.parent == site.backups
    st = first.backup.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert (
        first.backup.name.startswith(f"{site.dbname}-")
        and "before-20090105-01" in first.backup.name
    )
    # Two more runs with one new migration each: only the newest two dumps stay.
    site.add_migration("20100101-01.sql", "ALTER TABLE login ADD COLUMN b1 int;\n")
    second = migrations.apply_migrations(settings, site.reporter)
    site.add_migration("20100102-01.sql", "ALTER TABLE login ADD COLUMN b2 int;\n")
    third = migrations.apply_migrations(settings, site.reporter)
    dumps = sorted(p.name for p in site.backups.iterdir())
    assert dumps == sorted([second.backup.name, third.backup.name])  # type: ignore[union-attr]
    assert not first.backup.exists()
    # The second dump holds the database as it was before 20100101-01.
    restored = site.dbname + "_restored"
    try:
        pg_restore(site, postgres, second.backup, restored)
        conn = postgres.connect(restored)
        with conn.cursor() as cur:
            cur.execute("SELECT login, unixid FROM login ORDER BY 1")
            assert cur.fetchall() == before_rows
            cur.execute("SELECT count(*) FROM ivle_maint_migrations")
            assert cur.fetchone() == (len(ALL),)
            cur.execute("SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'login' AND column_name LIKE 'b_'")  # fmt: skip
            assert cur.fetchall() == []
        conn.close()
    finally:
        schema.drop_database(postgres, restored)


def test_failure_message_names_the_backup_and_a_way_back_that_works(
        site: Site, postgres: Any) -> None:
    """A failed `db migrate` outside an upgrade names its dump and commands
    that really put it back on IVLE's schema (a function that depends on a
    table: pg_restore --clean cannot drop that table), run as printed."""
    start_from(site, "20090401-01")
    site.run_sql("CREATE FUNCTION enabled_logins() RETURNS SETOF login LANGUAGE sql STABLE "
                 "AS $$ SELECT * FROM login $$;")
    before = site.marker()
    site.add_migration("20100101-01.sql", "ALTER TABLE login ADD COLUMN b1 int;\n")
    site.add_migration("20100102-01.sql", "SELECT 1 / 0;\n")
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(backup=True), site.reporter)
    message = str(info.value)
    (dump,) = site.backups.iterdir()
    lead = f"backup taken before this run: {dump} (to put it back, not over the live database: "
    assert lead in message and "--clean" not in message
    assert site.pg.ivle_password not in message and "\n" not in message
    assert "b1" in site.columns("login")  # 20100101-01 stays applied
    commands = message.split(lead, 1)[1].removesuffix(")")
    restore, swap = commands.split(", then with IVLE's web server and user management server "
                                "stopped: ")
    replaced = f"{site.dbname}_replaced"
    try:
        for command in (restore, swap):  # nothing is connected between the two
            # pg_restore, as IVLE's login, asks its password: typed.
            done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                                  check=False,
                                  env={**os.environ, "PGPASSWORD": site.pg.ivle_password})
            assert done.returncode == 0, (command, done.stderr)
        assert "b1" not in site.columns("login") and site.marker() == before
        assert site.query("SELECT count(*) FROM enabled_logins()")[0][0] > 0
        assert site.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = "
                          "current_database()") == [(site.pg.ivle_user,)]
    finally:
        schema.drop_database(postgres, replaced)
        schema.drop_database(postgres, f"{site.dbname}_restored")


def test_no_backup_option_and_setting(site: Site) -> None:
    start_from(site, "20090401-01")
    site.add_migration("20100101-01.sql", "SELECT 1;\n")
    result = migrations.apply_migrations(site.settings(backup=True), site.reporter, backup=False)
    assert result.backup is None and result.applied
    assert not site.backups.exists() or not any(site.backups.iterdir())


def test_backup_now_and_pg_dump_failure(site: Site) -> None:
    path = migrations.backup_now(site.settings(), site.reporter)
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("(to put it back: sudo -u postgres createdb " in line
               for line in site.reporter.lines)
    # pg_dump is given the wrong password (PGPASSWORD): a one-line error.
    from ivle_maint.db import backup
    from ivle_maint.db.connect import params_from_settings

    params = params_from_settings(site.settings())
    wrong = type(params)(**{**params.__dict__, "password": "not-the-password"})
    with pytest.raises(
        MaintError, match=r"pg_dump of database .* failed: .*password authentication"
    ):
        backup.dump(wrong, site.backups, label="x", keep=5)
    assert [p.name for p in site.backups.iterdir()] == [path.name]  # no partial dump left


@pytest.mark.parametrize("header", ["", "-- ivle-maint: no-transaction\n"])
def test_a_migration_that_changes_how_strings_are_read_is_refused_before_it_runs(
        site: Site, header: str) -> None:
    """After its SET, the server read `SELECT 'a\\''; COMMIT; SELECT 1/0;` as
    three statements, the tokenizer as one (it read the whole file with the
    strings the session connected with): the COMMIT committed the column,
    the division failed, and the message said nothing was applied."""
    start_from(site, "20090401-01")
    before = site.marker()
    site.add_migration("20100101-01.sql",
                       f"{header}ALTER TABLE login ADD COLUMN planted int;\n"
                       "SET standard_conforming_strings = off;\n"
                       "SELECT 'a\\''; COMMIT; SELECT 1/0; -- \\'\n;\n")
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(), site.reporter)
    message = str(info.value)
    assert "20100101-01.sql" in message and "standard_conforming_strings" in message, message
    assert "planted" not in site.columns("login") and site.marker() == before


def test_a_statement_the_server_reads_as_several_is_refused_before_it_runs(site: Site) -> None:
    """A function named begin: psql's rule for BEGIN ... END bodies made the
    rest of the file one statement to the splitter, several to the server,
    whose COMMIT committed the column; the division failed, the message said
    nothing was applied.  Now the COMMIT is a statement of its own, seen."""
    pytest.importorskip("pglast")
    start_from(site, "20090401-01")
    before = site.marker()
    site.add_migration("20100101-01.sql",
                       "ALTER TABLE login ADD COLUMN planted int;\n"
                       "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"
                       "COMMIT;\nSELECT 1/0;\n")
    with pytest.raises(MaintError) as info:
        migrations.apply_migrations(site.settings(), site.reporter)
    message = str(info.value)
    assert "planted" not in site.columns("login") and site.marker() == before, message
    assert "20100101-01.sql" in message and "line 3: COMMIT part-way" in message, message

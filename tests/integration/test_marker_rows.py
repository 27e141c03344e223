"""The marker's rows are input: written by an older ivle-maint, by hand, or
damaged.  Whatever a row holds, `db status` shows it or says in one line
what is wrong, and `db migrate` never runs a migration the marker records
(in whatever spelling) and never crashes.

Each shipped migration here records that it ran in table ran_here, so a
migration run twice is seen, not inferred.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ivle_maint import cli
from ivle_maint.db import migrations
from support.migration_site import Site

pytestmark = pytest.mark.needs_postgres

KEYS = ["20090101", "20090101-01", "20090102-01", "20090103-01"]
BASELINED = KEYS[:3]  # recorded as run; the last one is pending
TABLE = "ivle_maint_migrations"


@pytest.fixture
def marked(site: Site) -> Iterator[Site]:
    """A site shipping KEYS, each of which notes in ran_here that it ran."""
    for path in site.migrations.iterdir():
        path.unlink()
    for key in KEYS:
        site.add_migration(f"{key}.sql", f"INSERT INTO ran_here VALUES ('{key}');\n")
    site.query("CREATE TABLE ran_here (key text)")
    yield site


def _reset(site: Site) -> None:
    """BASELINED recorded as applied, nothing run, every column nullable."""
    site.query(f"DROP TABLE IF EXISTS {TABLE}; TRUNCATE ran_here")
    migrations.record_baseline(site.settings(), BASELINED[-1], site.reporter)
    site.query(f"ALTER TABLE {TABLE} ALTER filename DROP NOT NULL, ALTER checksum DROP NOT "
               "NULL, ALTER mode DROP NOT NULL, ALTER applied_at DROP NOT NULL, ALTER host "
               "DROP NOT NULL, ALTER ivle_maint_version DROP NOT NULL")


def _digits(text: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in text)


def _spellings(key: str) -> st.SearchStrategy[str]:
    """Other spellings of KEY: what a hand, or another tool, might write."""
    day, _, number = key.partition("-")
    padded = [f"{day}-{int(number)}", f"{day}-{int(number):03d}"] if number else [f"{day}-"]
    return st.sampled_from([
        *padded, f"{key}.sql", f"{key}.SQL", f" {key}", f"{key} ", f"{key}\n", f"\t{key}",
        _digits(key, "\uff10"), _digits(key, "\u0660"), key.replace("-", "\u2010"),
        key + "\u200b", key.upper() + "-x",
    ])


ROW = st.sampled_from(BASELINED)


def _keys() -> st.SearchStrategy[tuple[str, str, Any]]:
    """(row, "key", new key) for a baselined row, or ("", "key", key) for a row added."""
    rekey = ROW.flatmap(lambda k: st.tuples(st.just(k), st.just("key"),
                                            st.one_of(_spellings(k), st.text(max_size=20))))
    added = st.tuples(st.just(""), st.just("key"),
                      st.one_of(st.sampled_from(["20990101", "20090101-02", "20090103-1",
                                                 "19990101-01"]), st.text(max_size=20)))
    return st.one_of(rekey, added)


def _values() -> st.SearchStrategy[tuple[str, str, Any]]:
    """(row, column, new value) for a baselined row."""
    nulls = st.tuples(ROW, st.sampled_from(["filename", "checksum", "mode", "applied_at",
                                            "host", "ivle_maint_version", "duration"]),
                      st.none())
    texts = st.tuples(ROW, st.sampled_from(["checksum", "mode", "host", "filename"]),
                      st.text(max_size=80))
    times = st.tuples(ROW, st.just("applied_at"),
                      st.sampled_from(["infinity", "-infinity", "9999-12-31 23:59:59+00",
                                       "12000-01-01 00:00+00", "0044-03-15 00:00+00 BC",
                                       "2999-01-01 00:00+00"]))
    durations = st.tuples(ROW, st.just("duration"),
                          st.sampled_from([float("nan"), float("inf"), -1.0, 1e308]))
    return st.one_of(nulls, texts, times, durations)


def _apply_damage(site: Site, row: str, column: str, value: Any) -> None:
    if row == "":  # a row added, as a hand would add it
        site.query(f"INSERT INTO {TABLE} (key, filename, checksum, mode, host, "
                   "ivle_maint_version) VALUES (%s, 'x.sql', 'x', 'transaction', 'h', '0') "
                   "ON CONFLICT DO NOTHING", [value.replace("\x00", "")])
        return
    if isinstance(value, str):
        value = value.replace("\x00", "")  # PostgreSQL's text holds no NUL
    if column == "key" and site.query(f"SELECT 1 FROM {TABLE} WHERE key = %s", [value]):
        return  # the key is taken: the primary key refuses a duplicate
    site.query(f"UPDATE {TABLE} SET {column} = %s WHERE key = %s", [value, row])


def _cli(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    conf = site.root / "etc" / "ivle-maint.conf"
    status = cli.main(["--config", str(conf), "db", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _one_error(err: str) -> None:
    """A refusal is one error line (and perhaps the resume line), no traceback."""
    lines = err.splitlines()
    assert lines and lines[0].startswith("ivle-maint: error: "), err
    assert all(line.startswith("ivle-maint: ") for line in lines), err
    assert "Traceback" not in err, err


def _sha(site: Site, key: str) -> str:
    return hashlib.sha256((site.migrations / f"{key}.sql").read_bytes()).hexdigest()


def _migrate_once(site: Site, capsys: pytest.CaptureFixture[str],
                  damage: tuple[str, str, Any], out_of_order: bool) -> None:
    """DAMAGE done to the marker: status and migrate say one line or work,
    and no migration recorded runs again."""
    _reset(site)
    _apply_damage(site, *damage)
    before = site.query(f"SELECT t::text FROM {TABLE} t ORDER BY key")

    status, _, err = _cli(site, capsys, "status")
    assert status in (0, 1), err
    if status:
        _one_error(err)

    argv = ["migrate", "--no-backup", *(["--allow-out-of-order"] if out_of_order else [])]
    status, _, err = _cli(site, capsys, *argv)
    ran = [r[0] for r in site.query("SELECT key FROM ran_here ORDER BY key")]
    # Never a migration the marker recorded (the baselined ones) run again.
    assert not set(ran) & set(BASELINED), (damage, err)
    assert len(ran) == len(set(ran))
    if status:
        _one_error(err)
        assert ran == []  # refused before anything ran
        assert site.query(f"SELECT t::text FROM {TABLE} t ORDER BY key") == before
    else:
        assert ran == [KEYS[-1]], (damage, err)
        row = site.query(f"SELECT checksum FROM {TABLE} WHERE key = %s", [KEYS[-1]])
        assert row == [(_sha(site, KEYS[-1]),)]


SLOW = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@SLOW
@example(damage=("20090101", "checksum", None), out_of_order=False)
@example(damage=("20090101", "applied_at", "12000-01-01 00:00+00"), out_of_order=False)
@given(damage=_values(), out_of_order=st.booleans())
def test_whatever_a_marker_row_holds_status_and_migrate_say_one_line_or_work(
        marked: Site, capsys: pytest.CaptureFixture[str], damage: tuple[str, str, Any],
        out_of_order: bool) -> None:
    _migrate_once(marked, capsys, damage, out_of_order)


@SLOW
@example(damage=("20090101-01", "key", "20090101-1"), out_of_order=True)
@example(damage=("20090102-01", "key", "20090102-01 "), out_of_order=False)
@given(damage=_keys(), out_of_order=st.booleans())
def test_whatever_a_marker_key_holds_no_migration_it_records_runs_again(
        marked: Site, capsys: pytest.CaptureFixture[str], damage: tuple[str, str, Any],
        out_of_order: bool) -> None:
    _migrate_once(marked, capsys, damage, out_of_order)


COLUMNS = ["key", "filename", "checksum", "mode", "applied_at", "duration", "host",
           "ivle_maint_version", "package_version", "note", "class_override"]
TYPES = ["text", "varchar(40)", "char(40)", "bytea", "integer", "bigint", "numeric",
         "boolean", "json", "date", "timestamp", "interval", "text[]"]


@SLOW
@example(column="applied_at", type_name="text")
@example(column="duration", type_name="text")
@example(column="key", type_name="char(40)")
@given(column=st.sampled_from(COLUMNS), type_name=st.sampled_from(TYPES))
def test_a_marker_column_of_another_type_is_one_line_never_a_traceback(
        marked: Site, capsys: pytest.CaptureFixture[str], column: str, type_name: str) -> None:
    _reset(marked)
    conn = marked.connect()
    try:
        with conn, conn.cursor() as cur:  # the ways a hand could change it
            cur.execute(f"ALTER TABLE {TABLE} ALTER {column} TYPE {type_name} "
                        f"USING {column}::text::{type_name}")
    except Exception:  # psycopg2.Error: no such cast from these values
        assume(False)
    finally:
        conn.close()
    for argv in (["status"], ["migrate", "--no-backup"]):
        status, _, err = _cli(marked, capsys, *argv)
        assert status in (0, 1), err
        if status:
            _one_error(err)
    ran = [r[0] for r in marked.query("SELECT key FROM ran_here")]
    assert ran in ([], [KEYS[-1]]), ran


def test_a_time_out_of_pythons_range_is_shown_as_unknown(
        marked: Site, capsys: pytest.CaptureFixture[str]) -> None:
    _reset(marked)
    marked.query(f"UPDATE {TABLE} SET applied_at = 'infinity' WHERE key = '20090101'")
    status, out, err = _cli(marked, capsys, "status")
    assert status == 0, err
    assert any(line.startswith("applied      20090101 ") and "(time unknown) baseline" in line
               for line in out.splitlines()), out


def test_a_key_spelled_otherwise_is_refused_with_the_statement_that_fixes_it(
        marked: Site, capsys: pytest.CaptureFixture[str]) -> None:
    _reset(marked)
    marked.query(f"UPDATE {TABLE} SET key = '20090101-1' WHERE key = '20090101-01'")
    status, _, err = _cli(marked, capsys, "migrate", "--no-backup")
    assert status == 1
    _one_error(err)
    fix = (f"UPDATE {TABLE} SET key = '20090101-01' WHERE key = '20090101-1'")
    assert fix in err
    marked.query(fix)
    status, _, err = _cli(marked, capsys, "migrate", "--no-backup")
    assert status == 0, err
    assert marked.query("SELECT key FROM ran_here") == [(KEYS[-1],)]


def test_a_checksum_set_to_null_is_a_changed_file_that_can_be_accepted(
        marked: Site, capsys: pytest.CaptureFixture[str]) -> None:
    _reset(marked)
    marked.query(f"UPDATE {TABLE} SET checksum = NULL WHERE key = '20090101'")
    status, out, err = _cli(marked, capsys, "status")
    assert status == 0, err
    assert any(line.startswith("changed      20090101 ") for line in out.splitlines()), out
    status, _, err = _cli(marked, capsys, "migrate", "--no-backup")
    assert status == 1 and "--accept-changed 20090101" in err
    status, _, err = _cli(marked, capsys, "migrate", "--no-backup", "--accept-changed", "20090101")
    assert status == 0, err
    assert marked.query(f"SELECT checksum FROM {TABLE} WHERE key = '20090101'") == [
        (_sha(marked, "20090101"),)]
    assert marked.query("SELECT key FROM ran_here") == [(KEYS[-1],)]

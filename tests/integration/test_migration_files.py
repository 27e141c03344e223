"""Migration files are input: whatever their bytes, `db migrate` on a real
PostgreSQL refuses them in one line before anything runs, or applies each
once with the checksum of the bytes that ran."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ivle_maint import cli
from support.db_site import baselined_site
from support.migration_site import Site

pytestmark = pytest.mark.needs_postgres

KEY = "20100101-01"
TABLE = "ivle_maint_migrations"
HEADS = ["", "-- ivle-maint: no-transaction\n", "BEGIN;\n", "\ufeff"]
BODY = "CREATE TABLE made_here (a int);\nINSERT INTO made_here VALUES (1), (2);\n"
ODD = ["\x00", "\ufeff", "\r", "\x0b", "\u2028", "\u200b", "\u00a0", "\uff1b", "'", "$$", ";"]


@pytest.fixture
def db(postgres: Any, tmp_path: Any) -> Iterator[Site]:
    with baselined_site(postgres, tmp_path) as site:
        yield site


def _cli(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = cli.main(["--config", str(site.root / "etc" / "ivle-maint.conf"), "db", *argv])
    return status, capsys.readouterr().err


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(head=HEADS[1], odd="\x00", at=0)
@example(head="", odd="\ufeff", at=BODY.index(");\nINSERT") - 1)  # pglast's message not UTF-8
@example(head="", odd="\ufeff", at=len(BODY) - 3)
@example(head="", odd="\x00", at=BODY.index(", (2)"))  # the text after it would not run
@given(head=st.sampled_from(HEADS), odd=st.sampled_from(ODD), at=st.integers(0, len(BODY)))
def test_an_odd_character_anywhere_is_refused_before_anything_runs_or_applied_once(
        db: Site, capsys: pytest.CaptureFixture[str], head: str, odd: str, at: int) -> None:
    body = BODY[:at] + odd + BODY[at:]
    text = head + body + ("COMMIT;\n" if head == "BEGIN;\n" else "")
    db.query(f"DELETE FROM {TABLE} WHERE key = %s; DROP TABLE IF EXISTS made_here", [KEY])
    path = db.add_migration(f"{KEY}.sql", "")
    path.write_bytes(text.encode())
    status, err = _cli(db, capsys, "migrate", "--no-backup")
    assert "Traceback" not in err, err
    row = db.query(f"SELECT checksum FROM {TABLE} WHERE key = %s", [KEY])
    if status:
        assert err.startswith("ivle-maint: error: "), err
        assert row == [], err
        if head != HEADS[1]:  # one transaction: nothing of it stays
            assert not db.table_exists("made_here"), err
        if odd == "\x00":  # refused before anything ran, whatever the mode
            assert not db.table_exists("made_here"), err
    else:  # what ran is the whole text, and its checksum is recorded
        # Its one column as PostgreSQL named it: a character beside 'a' (U+2028,
        # a zero-width space) is part of the name to the server.
        assert db.query("SELECT * FROM made_here ORDER BY 1") == [(1,), (2,)], text
        assert row == [(hashlib.sha256(text.encode()).hexdigest(),)]


# PostgreSQL's own reading of a text is the oracle: the whole text run at
# once by the server (as psql would send it) and ivle-maint's statements
# must do the same, or ivle-maint refuses the file.  What separates them
# is what the scanners may disagree on: line ends, spaces, comments.
SEPARATORS = ["\n", "\r", "\r\n", " ", "\t", "\f", "\x0b", "\u2028", "\x85", "\u00a0"]
ITEMS = st.one_of(st.integers(1, 9).map(lambda n: f"INSERT INTO ran VALUES ({n});"),
                  st.sampled_from(["-- a note", "/* a block */", "-- ;", "--"]))


def _oracle(site: Site, text: str) -> list[tuple[Any, ...]] | None:
    """The rows the whole text leaves in schema oracle, or None if the server refuses it."""
    conn = site.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS oracle CASCADE; CREATE SCHEMA oracle; "
                        "CREATE TABLE oracle.ran (n int); SET LOCAL search_path TO oracle")
            cur.execute(text)
            cur.execute("SELECT n FROM oracle.ran ORDER BY n")
            return cur.fetchall()
    except Exception:  # psycopg2.Error: the server refuses the text
        return None
    finally:
        conn.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(items=["INSERT INTO ran VALUES (1);", "-- a note", "INSERT INTO ran VALUES (2);"],
         separators=["\n", "\r", "\n"])
@given(items=st.lists(ITEMS, min_size=1, max_size=6),
       separators=st.lists(st.sampled_from(SEPARATORS), min_size=6, max_size=6))
def test_what_runs_is_what_postgresql_reads_in_the_file_or_the_file_is_refused(
        db: Site, capsys: pytest.CaptureFixture[str], items: list[str],
        separators: list[str]) -> None:
    text = "".join(item + sep for item, sep in zip(items, separators, strict=False))
    expected = _oracle(db, text)
    db.query(f"DELETE FROM {TABLE} WHERE key = %s; DROP TABLE IF EXISTS ran; "
             "CREATE TABLE ran (n int)", [KEY])
    db.add_migration(f"{KEY}.sql", "").write_bytes(text.encode())
    status, err = _cli(db, capsys, "migrate", "--no-backup")
    assert "Traceback" not in err, err
    ran = db.query("SELECT n FROM ran ORDER BY n")
    if status:
        assert err.startswith("ivle-maint: error: ") and ran == [], err
    else:
        assert expected is not None, f"PostgreSQL refuses {text!r}, ivle-maint ran {ran}"
        assert ran == expected, f"{text!r}: PostgreSQL reads {expected}, ivle-maint ran {ran}"

"""A migration file's bytes are input: whatever they are, classify() either
refuses the file with a MaintError or returns statements PostgreSQL's
client can send (psycopg2 refuses a NUL with a ValueError, mid-run)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ivle_maint.db import classify as cls
from ivle_maint.db.discovery import migration_for
from ivle_maint.errors import MaintError

# Pieces of IVLE-like migrations, and characters that split, parse or
# compare oddly: NUL, a BOM, CR, VT, FF, U+2028, a zero-width space,
# NBSP, a fullwidth semicolon, quotes and dollar signs.
PIECES = ["BEGIN;", "COMMIT;", "CREATE TABLE t (a int);", "INSERT INTO t VALUES (1);",
          "-- ivle-maint: no-transaction", "-- ivle-maint: empty", "-- a comment",
          "/* c */", "SELECT 'a''b';", "SELECT E'a\\'b';", "SELECT $$ x; $$;",
          "CREATE INDEX CONCURRENTLY i ON t (a);", "\n", "\r\n", " "]
ODD = ["\x00", "\ufeff", "\r", "\x0b", "\x0c", "\u2028", "\u200b", "\u00a0", "\uff1b",
       "'", '"', "$", ";", "\\"]

TEXTS = st.lists(st.one_of(st.sampled_from(PIECES), st.sampled_from(ODD)), max_size=12).map(
    "".join)
BYTES = st.one_of(TEXTS.map(str.encode), st.binary(max_size=40),
                  st.tuples(TEXTS, st.binary(max_size=3), TEXTS).map(
                      lambda t: t[0].encode() + t[1] + t[2].encode()))


def _write(directory: Path, data: bytes) -> Path:
    path = directory / "20100101-01.sql"
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path


@settings(max_examples=400, deadline=None)
@example(data="SELECT 1\ufeff;\n".encode(), standard_strings=True)  # pglast: UnicodeDecodeError
@given(data=BYTES, standard_strings=st.booleans())
def test_any_bytes_are_refused_or_give_statements_the_client_can_send(
        tmp_path_factory: pytest.TempPathFactory, data: bytes, standard_strings: bool) -> None:
    directory = tmp_path_factory.mktemp("m")
    path = _write(directory, data)
    try:
        found = cls.classify(migration_for(path), standard_strings=standard_strings)
    except MaintError as exc:
        assert "\n" not in str(exc)
        return
    assert found.checksum == hashlib.sha256(data).hexdigest()  # of the bytes that run
    for statement in (*found.statements, *found.stripped):
        assert "\x00" not in statement.text, (data, statement.text)
        statement.text.encode("utf-8")  # the client encoding


def test_a_nul_anywhere_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, b"-- ivle-maint: no-transaction\nCREATE TABLE a (x int);\n\x00;\n")
    try:
        cls.classify(migration_for(path))
    except MaintError as exc:
        assert "line 3: a NUL byte" in str(exc), exc
    else:
        raise AssertionError("a NUL byte was let through")

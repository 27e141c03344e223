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


# Each a way a file changes how the server reads a plain string's backslash
# (standard_conforming_strings), after which the tokenizer, which read the
# whole file one way, splits it where the server does not.
_STRINGS_SETTING = st.sampled_from([
    "SET {name} = {value};", "SET {name} TO {value};", "SET SESSION {name} = {value};",
    "SET LOCAL {name} TO {value};", "RESET {name};",
    "SELECT set_config('{name}', '{value}', false);",
    "DO $$ BEGIN SET {name} = {value}; END $$;",
    "SET \"{name}\" = {value};",
])


@settings(max_examples=80, deadline=None)
@given(form=_STRINGS_SETTING,
       name=st.sampled_from(["standard_conforming_strings", "STANDARD_CONFORMING_STRINGS",
                             "Standard_Conforming_Strings"]),
       value=st.sampled_from(["off", "on", "false", "DEFAULT", "0"]),
       start=st.tuples(st.sampled_from(["", "-- ivle-maint: no-transaction\n"]),
                       st.sampled_from(["", "CREATE TABLE t (a int);\n"])))
def test_a_file_that_changes_how_strings_are_read_is_refused_naming_its_line(
        tmp_path_factory: pytest.TempPathFactory, form: str, name: str, value: str,
        start: tuple[str, str]) -> None:
    """The tokenizer reads every statement with the strings the session had
    when it connected: after a SET of standard_conforming_strings, `SELECT
    'a\\''; COMMIT; SELECT 1/0;` was one statement to it and three to the
    server, whose COMMIT committed the migration's first half, unrecorded."""
    header, before = start
    if '"' in form and name != name.lower():
        name = name.lower()  # a quoted name is the setting only in lower case
    setting = form.format(name=name, value=value)
    text = f"{header}{before}{setting}\nSELECT 'a\\''; COMMIT; SELECT 1/0; -- \\'\n;\n"
    path = _write(tmp_path_factory.mktemp("m"), text.encode())
    with pytest.raises(MaintError) as caught:
        cls.classify(migration_for(path))
    line = 2 + bool(header) + bool(before) - 1
    message = str(caught.value)
    assert f"line {line}:" in message and "standard_conforming_strings" in message, message
    assert "\n" not in message


def test_a_mention_of_the_setting_in_a_comment_or_a_name_is_no_change(tmp_path: Path) -> None:
    text = ("-- written with standard_conforming_strings on\n"
            "CREATE TABLE standard_conforming_strings_seen (a int);\n"
            "/* standard_conforming_strings */ SELECT 1;\n")
    cls.classify(migration_for(_write(tmp_path, text.encode())))


@settings(max_examples=60, deadline=None)
@given(create=st.sampled_from(["CREATE FUNCTION", "CREATE OR REPLACE FUNCTION",
                               "create procedure", "CREATE OR REPLACE PROCEDURE"]),
       name=st.sampled_from(["begin", "BEGIN", "Begin", "begin.f", "f"]),
       header=st.sampled_from(["", "-- ivle-maint: no-transaction\n"]))
def test_each_statement_is_one_to_the_server_whatever_a_function_is_named(
        tmp_path_factory: pytest.TempPathFactory, create: str, name: str, header: str) -> None:
    """psql's rule for CREATE FUNCTION ... BEGIN ... END bodies took a
    function named begin (or a SET ... = begin before the body) for one:
    what followed, a COMMIT too, was one statement to the splitter and
    several to the server.  Now each statement is one to PostgreSQL's
    parser (the splitter reads a body as BEGIN ATOMIC; classify._check_split
    refuses a file where they disagree), and a COMMIT part-way through a
    file ivle-maint wraps in its transaction is refused."""
    pytest.importorskip("pglast")
    from ivle_maint.db import pgparse

    returns = "RETURNS int LANGUAGE sql" if "FUNCTION" in create.upper() else "LANGUAGE sql"
    value = "SELECT 1" if "FUNCTION" in create.upper() else "SELECT"
    tail = " SET search_path = begin" if name == "f" else ""
    body = (f"CREATE TABLE t (a int);\n{create} {name}() {returns}{tail} "
            f"AS '{value}';\nALTER TABLE t ADD COLUMN b int;\nCOMMIT;\nSELECT 1/0;\n")
    path = _write(tmp_path_factory.mktemp("m"), (header + body).encode())
    if not header:
        with pytest.raises(MaintError) as caught:
            cls.classify(migration_for(path))
        assert "line 4: COMMIT part-way through the file" in str(caught.value), caught.value
        return
    found = cls.classify(migration_for(path))
    assert [pgparse.count(s.text) for s in found.statements] == [1] * 5
    assert [s.head[0] for s in found.statements] == ["CREATE", "CREATE", "ALTER", "COMMIT",
                                                     "SELECT"]


def test_a_function_body_begin_atomic_is_one_statement(tmp_path: Path) -> None:
    pytest.importorskip("pglast")
    text = ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
            "SELECT CASE WHEN true THEN 2 END; END;\nCREATE FUNCTION \"begin\"() RETURNS int "
            "LANGUAGE sql AS 'SELECT 1';\nSELECT 3;\n")
    found = cls.classify(migration_for(_write(tmp_path, text.encode())))
    assert len(found.statements) == 3


@settings(max_examples=40, deadline=None)
@given(create=st.sampled_from(["CREATE FUNCTION", "CREATE OR REPLACE FUNCTION",
                               "create procedure", "CREATE OR REPLACE PROCEDURE"]),
       name=st.sampled_from(["begin", "BEGIN", "Begin", "begin.f"]))
def test_without_pglast_a_function_named_begin_ends_at_its_semicolon(
        tmp_path_factory: pytest.TempPathFactory, create: str, name: str) -> None:
    """Without pglast (only recommended) the splitter is all there is: a
    body is BEGIN ATOMIC, as the server reads it, so the COMMIT after such a
    function is a statement of its own, and refused as one."""
    from ivle_maint.db import pgparse

    returns = "RETURNS int LANGUAGE sql" if "FUNCTION" in create.upper() else "LANGUAGE sql"
    value = "SELECT 1" if "FUNCTION" in create.upper() else "SELECT"
    text = (f"CREATE TABLE t (a int);\n{create} {name}() {returns} AS '{value}';\n"
            "ALTER TABLE t ADD COLUMN b int;\nCOMMIT;\nSELECT 1/0;\n")
    path = _write(tmp_path_factory.mktemp("m"), text.encode())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pgparse, "_parse", False)
        with pytest.raises(MaintError) as caught:
            cls.classify(migration_for(path))
    assert "line 4: COMMIT part-way through the file" in str(caught.value), caught.value

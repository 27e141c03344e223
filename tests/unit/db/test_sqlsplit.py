"""The statement splitter and the classification of migration files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ivle_maint.db import classify as cls
from ivle_maint.db import pgparse
from ivle_maint.db.discovery import discover, migration_for
from ivle_maint.db.sqlsplit import SplitError, header_comments, split, tokenize
from ivle_maint.errors import MaintError

FAKES = Path(__file__).resolve().parents[2] / "fakes" / "migrations"


def texts(sql: str, **kwargs: bool) -> list[str]:
    return [s.text for s in split(sql, **kwargs)]


# -- splitting -----------------------------------------------------------


def test_plain_statements_split_on_semicolons() -> None:
    assert texts("SELECT 1;\nSELECT 2;\n") == ["SELECT 1;", "SELECT 2;"]


def test_semicolon_inside_single_quotes_with_doubled_quote() -> None:
    sql = "INSERT INTO t VALUES ('a;b', 'it''s; fine');\nSELECT 2;"
    assert texts(sql) == ["INSERT INTO t VALUES ('a;b', 'it''s; fine');", "SELECT 2;"]


def test_e_string_backslash_quote_does_not_end_the_string() -> None:
    sql = "SELECT E'it\\'s; here';\nSELECT 2;"
    assert texts(sql) == ["SELECT E'it\\'s; here';", "SELECT 2;"]


def test_lowercase_e_string_and_escaped_backslash_before_quote() -> None:
    # e'\\' is one backslash: the quote after it ends the string.
    sql = "SELECT e'\\\\'; SELECT ';';"
    assert texts(sql) == ["SELECT e'\\\\';", "SELECT ';';"]


def test_backslash_in_plain_string_is_literal_with_standard_strings() -> None:
    sql = "SELECT 'C:\\'; SELECT 2;"
    assert texts(sql) == ["SELECT 'C:\\';", "SELECT 2;"]


def test_backslash_escapes_plain_strings_when_standard_strings_off() -> None:
    sql = "SELECT 'it\\'s;'; SELECT 2;"
    assert texts(sql, standard_strings=False) == ["SELECT 'it\\'s;';", "SELECT 2;"]


def test_e_only_when_adjacent_to_the_quote() -> None:
    # "E 'x\'" is the column alias E then a plain string ending at the backslash+quote.
    sql = "SELECT 1 AS E, 'x\\'; SELECT 2;"
    assert texts(sql) == ["SELECT 1 AS E, 'x\\';", "SELECT 2;"]


def test_quoted_identifier_with_semicolon_and_doubled_quote() -> None:
    sql = 'ALTER TABLE "we;ird""t" ADD c int; SELECT 1;'
    assert texts(sql) == ['ALTER TABLE "we;ird""t" ADD c int;', "SELECT 1;"]


def test_line_comment_with_semicolon() -> None:
    sql = "SELECT 1 -- not the end; really\n+ 1;\nSELECT 2;"
    assert texts(sql) == ["SELECT 1 -- not the end; really\n+ 1;", "SELECT 2;"]


def test_nested_block_comments() -> None:
    sql = "/* a /* b; */ still a; */ SELECT 1; SELECT 2;"
    statements = split(sql)
    assert [s.head for s in statements] == [("SELECT", "1", ";"), ("SELECT", "2", ";")]


def test_dollar_quoted_function_body() -> None:
    sql = (
        "CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n  PERFORM 1; RETURN 2;\nEND;\n$$"
        " LANGUAGE plpgsql;\nSELECT f();"
    )
    statements = split(sql)
    assert len(statements) == 2
    assert statements[0].text.endswith("LANGUAGE plpgsql;")
    assert statements[1].line == 6


def test_tagged_dollar_quote_containing_plain_dollar_quotes() -> None:
    sql = "CREATE FUNCTION g() RETURNS text AS $fn$ SELECT $$;$$ $fn$ LANGUAGE sql; SELECT 1;"
    assert len(split(sql)) == 2
    assert split(sql)[0].text.endswith("LANGUAGE sql;")


def test_positional_parameter_is_not_a_dollar_quote() -> None:
    sql = "PREPARE p AS SELECT $1 + $2; SELECT 'x';"
    assert len(split(sql)) == 2


def test_identifier_with_dollar_is_not_a_dollar_quote() -> None:
    sql = "SELECT a$b$ FROM t; SELECT 2;"
    assert texts(sql) == ["SELECT a$b$ FROM t;", "SELECT 2;"]


def test_semicolon_inside_parentheses_does_not_split() -> None:
    sql = "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); SELECT 1;"
    assert len(split(sql)) == 2


def test_begin_atomic_function_body() -> None:
    sql = (
        "CREATE OR REPLACE FUNCTION h() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n"
        "  SELECT 1;\n  SELECT CASE WHEN true THEN 2 END;\nEND;\nSELECT h();"
    )
    statements = split(sql)
    assert len(statements) == 2
    assert statements[0].text.endswith("END;")


def test_begin_transaction_is_a_statement_of_its_own() -> None:
    heads = [s.head for s in split("BEGIN;\nSELECT 1;\nCOMMIT;\n")]
    assert heads == [("BEGIN", ";"), ("SELECT", "1", ";"), ("COMMIT", ";")]


def test_last_statement_without_semicolon_is_kept() -> None:
    assert texts("SELECT 1;\nSELECT 2\n") == ["SELECT 1;", "SELECT 2"]


def test_comments_only_gives_no_statements() -> None:
    assert split("-- one\n/* two; */\n-- three;\n") == []


def test_empty_statements_are_dropped() -> None:
    assert texts(";;SELECT 1;;") == ["SELECT 1;"]


def test_line_numbers_point_at_the_first_word() -> None:
    statements = split("-- header\n\nSELECT 1;\n/* c */\nSELECT\n2;")
    assert [s.line for s in statements] == [3, 5]


def test_head_skips_comments_and_uppercases_words() -> None:
    (s,) = split("create /* x */ unique -- y\n index concurrently i on t (c);")
    assert s.head[:4] == ("CREATE", "UNIQUE", "INDEX", "CONCURRENTLY")


def test_tokens_reassemble_the_text() -> None:
    text = (FAKES / "20090212-01.sql").read_text()
    assert "".join(t.text for t in tokenize(text)) == text


def test_byte_order_mark_is_ignored() -> None:
    assert split("\ufeffSELECT 1;")[0].head == ("SELECT", "1", ";")


@pytest.mark.parametrize(
    ("sql", "reason", "line"),
    [
        ("SELECT 'abc;\n", "unterminated quoted string", 1),
        ("SELECT 1;\nSELECT E'ab\\';\n", "unterminated quoted string", 2),
        ('SELECT "abc;\n', "unterminated quoted identifier", 1),
        ("SELECT 1;\n/* a /* b */ c;\n", "unterminated /* comment", 2),
        ("SELECT 1;\n\nSELECT $x$ abc $$;\n", "unterminated dollar-quoted string $x$", 3),
        ("SELECT (1;\nSELECT 2;", "unclosed parenthesis", 1),
    ],
)
def test_unterminated_constructs_raise_with_line(sql: str, reason: str, line: int) -> None:
    with pytest.raises(SplitError) as info:
        split(sql)
    assert info.value.reason == reason
    assert info.value.line == line


def test_copy_from_stdin_refused() -> None:
    with pytest.raises(SplitError, match=r"COPY \.\.\. FROM STDIN"):
        split("COPY login (login) FROM stdin;\nalice\n\\.\n")


def test_meta_command_is_its_own_statement() -> None:
    statements = split("SELECT 1;\n\\set ON_ERROR_STOP on\nSELECT 2;")
    assert [s.meta for s in statements] == [False, True, False]
    assert statements[1].head == ("\\set",)


def test_header_comments_stop_at_first_statement() -> None:
    text = "-- ivle-maint: no-transaction\n-- why\nSELECT 1;\n-- later\n"
    assert header_comments(text) == [(1, "ivle-maint: no-transaction"), (2, "why")]


def test_all_fake_migrations_split() -> None:
    counts = {m.key: len(split(m.path.read_text())) for m in discover(FAKES)}
    assert counts == {
        "20090105": 1,
        "20090105-01": 4,
        "20090212-01": 5,
        "20090212-02": 2,
        "20090301-01": 0,
        "20090315-01": 4,
        "20090401-01": 1,
    }


# -- classification ------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "20100101-01.sql") -> cls.Classified:
    path = tmp_path / name
    path.write_text(text)
    return cls.classify(migration_for(path))


def refused(tmp_path: Path, text: str, **kwargs: int) -> str:
    path = tmp_path / "20100101-01.sql"
    path.write_text(text)
    with pytest.raises(MaintError) as info:
        cls.classify(migration_for(path), **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_file_without_transaction_statements_is_wrapped(tmp_path: Path) -> None:
    c = write(tmp_path, "ALTER TABLE t ADD c int;\nUPDATE t SET c = 1;\n")
    assert c.mode == cls.TRANSACTION
    assert len(c.statements) == 2
    assert c.stripped == ()


def test_own_begin_commit_is_stripped(tmp_path: Path) -> None:
    c = write(tmp_path, "-- x\nBEGIN;\nALTER TABLE t ADD c int;\nCOMMIT;\n")
    assert c.mode == cls.OWN_TRANSACTION
    assert [s.text for s in c.statements] == ["ALTER TABLE t ADD c int;"]
    assert [s.line for s in c.stripped] == [2, 4]


@pytest.mark.parametrize(
    ("begin", "end"),
    [
        ("BEGIN WORK", "COMMIT WORK"),
        ("START TRANSACTION", "END"),
        ("begin transaction", "end transaction"),
    ],
)
def test_begin_commit_spellings(tmp_path: Path, begin: str, end: str) -> None:
    c = write(tmp_path, f"{begin};\nSELECT 1;\n{end};\n")
    assert c.mode == cls.OWN_TRANSACTION
    assert len(c.statements) == 1


def test_savepoints_stay_inside_the_transaction(tmp_path: Path) -> None:
    c = write(tmp_path, "BEGIN;\nSAVEPOINT a;\nSELECT 1;\nRELEASE SAVEPOINT a;\nCOMMIT;\n")
    assert c.mode == cls.OWN_TRANSACTION
    assert [s.head[0] for s in c.statements] == ["SAVEPOINT", "SELECT", "RELEASE"]


def test_begin_inside_a_function_body_is_not_transaction_control(tmp_path: Path) -> None:
    text = "CREATE FUNCTION f() RETURNS void AS $$ BEGIN NULL; END; $$ LANGUAGE plpgsql;\n"
    assert write(tmp_path, text).mode == cls.TRANSACTION


def test_comments_only_file_is_refused_unless_marked_empty(tmp_path: Path) -> None:
    # Recorded as applied, a file fixed later with --accept-changed never runs.
    message = refused(tmp_path, "-- folded into another migration\n/* ; */\n")
    assert "holds no SQL statement" in message and "-- ivle-maint: empty" in message
    assert refused(tmp_path, "").endswith("in its header")
    c = write(tmp_path, "-- ivle-maint: empty\n-- folded into another migration\n/* ; */\n")
    assert c.mode == cls.TRANSACTION
    assert c.statements == ()


def test_a_file_marked_empty_with_statements_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "-- ivle-maint: empty\nSELECT 1;\n")
    assert message.endswith("20100101-01.sql: line 2: its header says '-- ivle-maint: empty' "
                            "but it holds 1 statement(s)")


needs_pglast = pytest.mark.skipif(not pgparse.available(), reason="needs pglast")


@needs_pglast
def test_syntax_errors_are_found_by_postgresqls_parser(tmp_path: Path) -> None:
    message = refused(tmp_path, "BEGIN;\nALTER TABLE login ADD COLUMN x int;\n"
                                "SELEC 1;\nCOMMIT;\n")  # fmt: skip
    assert message.endswith('.sql: line 3: syntax error at or near "SELEC" (PostgreSQL\'s parser)')
    # A file that is not ASCII: the failing statement's line.
    message = refused(tmp_path, "COMMENT ON TABLE login IS 'élève';\n\nCREATE TABLE (x int);\n")
    assert ": line 3: syntax error" in message


@needs_pglast
def test_valid_ivle_shaped_files_parse(tmp_path: Path) -> None:
    c = write(tmp_path, "BEGIN;\nCREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n"
                        "  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n"
                        "UPDATE login SET nick = E'a\\'b';\nCOMMIT;\n")  # fmt: skip
    assert c.mode == cls.OWN_TRANSACTION and len(c.statements) == 2


def test_without_pglast_the_tokenizer_checks_remain(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgparse, "_parse", False)
    assert not pgparse.available()
    c = write(tmp_path, "SELEC 1;\n")  # only the server would see this one
    assert c.statements[0].text == "SELEC 1;"
    assert "BEGIN without a matching COMMIT" in refused(tmp_path, "BEGIN;\nSELECT 1;\n")


def test_checksum_is_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    c = write(tmp_path, "SELECT 1;\n")
    assert c.checksum == hashlib.sha256(b"SELECT 1;\n").hexdigest()


def test_commit_in_the_middle_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "BEGIN;\nSELECT 1;\nCOMMIT;\nBEGIN;\nSELECT 2;\nCOMMIT;\n")
    assert ": line 3: COMMIT part-way through the file" in message


def test_begin_without_commit_is_refused(tmp_path: Path) -> None:
    assert "line 1: BEGIN without a matching COMMIT" in refused(tmp_path, "BEGIN;\nSELECT 1;\n")


def test_commit_without_begin_is_refused(tmp_path: Path) -> None:
    assert "line 2: COMMIT part-way" in refused(tmp_path, "SELECT 1;\nCOMMIT;\n")


def test_rollback_is_refused(tmp_path: Path) -> None:
    assert "line 3: ROLLBACK is not supported" in refused(
        tmp_path, "BEGIN;\nSELECT 1;\nROLLBACK;\n"
    )


def test_begin_with_isolation_level_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;\n")
    assert "BEGIN ISOLATION LEVEL SERIALIZABLE is not supported" in message


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (c);", "CREATE INDEX CONCURRENTLY"),
        ("create unique index concurrently i on t (c);", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY i;", "DROP INDEX CONCURRENTLY"),
        ("VACUUM ANALYZE login;", "VACUUM"),
        ("CREATE DATABASE x;", "CREATE DATABASE"),
        ("DROP DATABASE x;", "DROP DATABASE"),
        ("ALTER SYSTEM SET work_mem = '8MB';", "ALTER SYSTEM"),
        ("CREATE TABLESPACE s LOCATION '/x';", "CREATE TABLESPACE"),
        ("REINDEX TABLE CONCURRENTLY login;", "REINDEX ... CONCURRENTLY"),
        ("REINDEX (VERBOSE) DATABASE ivle;", "REINDEX DATABASE"),
        ("CLUSTER;", "CLUSTER without a table"),
        ("DISCARD ALL;", "DISCARD ALL"),
        ("ALTER DATABASE ivle SET TABLESPACE s;", "ALTER DATABASE ... SET TABLESPACE"),
    ],
)
def test_nontransactional_statement_refused_without_opt_out(
    tmp_path: Path, sql: str, what: str
) -> None:
    message = refused(tmp_path, f"-- header\nSELECT 1;\n{sql}\n")
    assert f"line 3: {what} cannot run inside a transaction" in message
    assert cls.OPT_OUT in message


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX i ON t (c);",
        "REINDEX TABLE login;",
        "CLUSTER login USING login_pkey;",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY v;",
        "ALTER DATABASE ivle SET search_path = public;",
        "ALTER TYPE mood ADD VALUE 'meh';",
    ],
)
def test_transactional_lookalikes_are_accepted(tmp_path: Path, sql: str) -> None:
    assert write(tmp_path, sql + "\n").mode == cls.TRANSACTION


def test_alter_type_add_value_is_nontransactional_before_pg12(tmp_path: Path) -> None:
    message = refused(tmp_path, "ALTER TYPE mood ADD VALUE 'meh';\n", server_version=110005)
    assert "ALTER TYPE ... ADD VALUE" in message


def test_opt_out_runs_statements_as_psql_would(tmp_path: Path) -> None:
    c = write(
        tmp_path,
        "-- ivle-maint: no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;\n"
        "CREATE INDEX CONCURRENTLY i ON t (c);\n",
    )
    assert c.mode == cls.NO_TRANSACTION
    assert [s.head[0] for s in c.statements] == ["BEGIN", "SELECT", "COMMIT", "CREATE"]
    assert [why for _, why in c.nontransactional] == ["CREATE INDEX CONCURRENTLY"]


def test_opt_out_only_counts_in_the_header(tmp_path: Path) -> None:
    message = refused(tmp_path, "SELECT 1;\n-- ivle-maint: no-transaction\nVACUUM;\n")
    assert "VACUUM cannot run inside a transaction" in message


def test_unknown_directive_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "-- ivle-maint: no-transactions\nSELECT 1;\n")
    assert "line 1: unknown directive" in message


def test_meta_command_refused(tmp_path: Path) -> None:
    assert "line 2: psql meta-command \\i is not supported" in refused(
        tmp_path, "SELECT 1;\n\\i other.sql\n"
    )


def test_split_error_names_file_and_line(tmp_path: Path) -> None:
    assert ": line 2: unterminated quoted string" in refused(tmp_path, "SELECT 1;\nSELECT 'x;\n")


def test_not_utf8_refused(tmp_path: Path) -> None:
    path = tmp_path / "20100101-01.sql"
    path.write_bytes(b"SELECT '\xff';\n")
    with pytest.raises(MaintError, match="not UTF-8"):
        cls.classify(migration_for(path))


def test_fake_migrations_classify_as_intended() -> None:
    modes = {m.key: cls.classify(m).mode for m in discover(FAKES)}
    assert modes == {
        "20090105": cls.TRANSACTION,
        "20090105-01": cls.OWN_TRANSACTION,
        "20090212-01": cls.OWN_TRANSACTION,
        "20090212-02": cls.TRANSACTION,
        "20090301-01": cls.TRANSACTION,
        "20090315-01": cls.OWN_TRANSACTION,
        "20090401-01": cls.NO_TRANSACTION,
    }


_SEPARATORS = ["\n", "\r", "\r\n", " ", "\t", "\f", "\u2028", "\x85"]
_ITEMS = ["SELECT 1;", "SELECT 'a;b';", "-- note", "-- ;", "--", "/* c; */", "SELECT $$;$$;"]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from(_ITEMS), st.sampled_from(_SEPARATORS)),
                      min_size=1, max_size=8))
def test_the_statements_found_are_those_postgresqls_parser_finds(
        parts: list[tuple[str, str]]) -> None:
    """pglast (PostgreSQL's own scanner and grammar) is the oracle: a line
    comment ends at CR as at LF, so what follows a CR runs."""
    if not pgparse.available():
        pytest.skip("pglast is not installed")
    text = "".join(item + sep for item, sep in parts)
    try:
        parsed = pgparse.parse(text)
    except pgparse.ParseFailure:  # e.g. U+2028 outside a comment: the server refuses it
        assume(False)
    assert len(split(text)) == len(parsed), repr(text)

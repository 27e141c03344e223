"""The tables a migration touches, as pglast parses them (db/touched_tables.py)."""

from __future__ import annotations

import pytest

from ivle_maint.db import pgparse, touched_tables
from ivle_maint.db.touched_tables import quoted, touched

needs_pglast = pytest.mark.skipif(not pgparse.available(), reason="pglast is not installed")


@needs_pglast
@pytest.mark.parametrize("sql,tables", [
    ("ALTER TABLE login ADD COLUMN x int;", {'"login"'}),
    ("ALTER TABLE public.login RENAME COLUMN a TO b;", {'"public"."login"'}),
    ("INSERT INTO t SELECT * FROM u JOIN v ON true;", {'"t"', '"u"', '"v"'}),
    ("UPDATE w SET a = 1 FROM z WHERE w.id = z.id;", {'"w"', '"z"'}),
    ("DELETE FROM offering WHERE id IN (SELECT id FROM semester);",
     {'"offering"', '"semester"'}),
    ("CREATE UNIQUE INDEX ix ON login (login);", {'"login"'}),
    ("DROP TABLE a.b, c;", {'"a"."b"', '"c"'}),
    ("DROP INDEX ix;", {'"ix"'}),
    ("COMMENT ON TABLE x IS 'y';", {'"x"'}),
    ("LOCK TABLE q IN SHARE MODE;", {'"q"'}),
    ("TRUNCATE r;", {'"r"'}),
    ('ALTER TABLE "Odd ""Name""" ADD COLUMN x int;', {'"Odd ""Name"""'}),
    ("SELECT 1;", set()),
    ("DROP FUNCTION f();", set()),
])
def test_the_relations_a_statement_names(sql: str, tables: set[str]) -> None:
    assert touched([sql]) == frozenset(tables)


@needs_pglast
def test_the_tables_of_every_statement_together() -> None:
    assert touched(["ALTER TABLE a ADD COLUMN x int;", "UPDATE b SET y = 1;"]) == \
        frozenset({'"a"', '"b"'})


@needs_pglast
@pytest.mark.parametrize("sql", [
    "DO $$ BEGIN UPDATE login SET x = 1; END $$;",
    "CALL refresh_everything();",
    "EXECUTE prepared_plan;",
    "ALTER TABLE login ADD COLUMN;",  # does not parse
])
def test_code_the_parser_cannot_see_into_means_every_table(sql: str) -> None:
    assert touched(["ALTER TABLE a ADD COLUMN x int;", sql]) is None


def test_without_pglast_every_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(touched_tables.pgparse, "available", lambda: False)
    assert touched(["ALTER TABLE login ADD COLUMN x int;"]) is None


def test_quoted_names_read_back_as_one_identifier_each() -> None:
    assert quoted("public", 'we"ird.name') == '"public"."we""ird.name"'

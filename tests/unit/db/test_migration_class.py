"""db/migration_class.py: each rule of doc/migrations.md's table, and the
promises that hold for any statement (Hypothesis)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ivle_maint.db import classify as cls
from ivle_maint.db import migration_class as mc
from ivle_maint.db import pgparse
from ivle_maint.db.discovery import migration_for
from ivle_maint.db.plan import class_of
from ivle_maint.db.sqlsplit import split

pytestmark = pytest.mark.skipif(not pgparse.available(), reason="pglast is not installed")


def verdict(sql: str) -> mc.Verdict:
    return mc.deciding(mc.verdicts(split(sql)))


def class_of_sql(sql: str) -> str:
    return verdict(sql).cls


@pytest.mark.parametrize("sql", [
    "CREATE TABLE n (id serial PRIMARY KEY, a text NOT NULL);",
    "ALTER TABLE t ADD COLUMN a integer;",
    "ALTER TABLE t ADD COLUMN a integer DEFAULT 0 NOT NULL;",
    "ALTER TABLE t ADD COLUMN a text DEFAULT 'x'::text;",
    "ALTER TABLE t ADD COLUMN a timestamptz DEFAULT CURRENT_TIMESTAMP;",
    "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN RETURN NEW; END $$ LANGUAGE plpgsql;",
    "CREATE VIEW v AS SELECT 1;",
    "CREATE TYPE e AS ENUM ('a');\nALTER TABLE t ADD COLUMN a e DEFAULT 'a';",
    "ALTER TABLE t ADD CONSTRAINT u UNIQUE USING INDEX i;",
    "CREATE SEQUENCE s;",
    "CREATE TYPE e AS ENUM ('a');",
    "ALTER TYPE e ADD VALUE 'b';",
    "ALTER TABLE t ALTER a SET DEFAULT 1;",
    "ALTER TABLE t ALTER a DROP NOT NULL;",
    "COMMENT ON TABLE t IS 'x';",
    "GRANT SELECT ON t TO someone;",
    "INSERT INTO t VALUES (1);",
    "SET LOCAL lock_timeout = '1s';",
])
def test_additive_statements(sql: str) -> None:
    assert class_of_sql(sql) == mc.ADDITIVE, verdict(sql)


def test_create_index_concurrently_is_additive() -> None:
    v = verdict("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a);")
    assert (v.cls, "SHARE UPDATE EXCLUSIVE" in v.what) == (mc.ADDITIVE, True)


def test_validate_constraint_alone_is_additive_but_not_under_an_earlier_lock() -> None:
    assert class_of_sql("ALTER TABLE t VALIDATE CONSTRAINT c;") == mc.ADDITIVE
    # In one transaction the ALTER's ACCESS EXCLUSIVE is held through the scan.
    sql = "ALTER TABLE t ADD COLUMN n int;\nALTER TABLE t VALIDATE CONSTRAINT c;\n"
    assert [v.cls for v in mc.verdicts(split(sql))] == [mc.ADDITIVE, mc.LOCKING]
    # Committed one by one (no-transaction), the lock is gone before the scan.
    assert {v.cls for v in mc.verdicts(split(sql), one_transaction=False)} == {mc.ADDITIVE}
    assert [v.cls for v in mc.verdicts(split("BEGIN;\n" + sql + "COMMIT;\n"),
                                       one_transaction=False)][2] == mc.LOCKING


@pytest.mark.parametrize("sql", [
    "ALTER TABLE t ADD COLUMN n int;\nINSERT INTO n SELECT * FROM t;",
    "CREATE INDEX i ON t (a);\nCREATE TABLE c AS SELECT * FROM t;",
    "LOCK TABLE t IN SHARE MODE;\nINSERT INTO n SELECT * FROM t;",
])
def test_a_scan_under_an_earlier_statements_lock_is_locking(sql: str) -> None:
    v = mc.verdicts(split(sql))[-1]
    assert v.cls == mc.LOCKING and "held until the migration commits" in v.what, v


def test_changes_to_a_table_created_in_the_same_migration_are_additive() -> None:
    sql = ("CREATE TABLE n (a int);\nCREATE INDEX i ON n (a);\n"
           "ALTER TABLE n ALTER a SET NOT NULL;\nUPDATE n SET a = 1;\n")
    assert {v.cls for v in mc.verdicts(split(sql))} == {mc.ADDITIVE}


@pytest.mark.parametrize(("sql", "safe"), [
    ("CREATE INDEX i ON t (a);", "CREATE INDEX CONCURRENTLY"),
    ("CREATE UNIQUE INDEX i ON t (a);", "CREATE INDEX CONCURRENTLY"),
    ("ALTER TABLE t ADD COLUMN a d DEFAULT 1;", "base type"),
    ("ALTER TABLE t ADD COLUMN a public.d;", "base type"),
    ("ALTER TABLE t ADD COLUMN a timestamptz DEFAULT clock_timestamp();", "constant default"),
    ("ALTER TABLE t ADD COLUMN id serial;", "batches"),
    ("ALTER TABLE t SET TABLESPACE other;", "maintenance window"),
    ("VACUUM FULL t;", "plain VACUUM"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE;", "leave locking"),
])
def test_locking_statements_name_the_safe_form(sql: str, safe: str) -> None:
    v = verdict(sql)
    assert v.cls == mc.LOCKING, v
    assert safe in v.safe


@pytest.mark.parametrize("sql", [
    "DROP TABLE t;",
    "DROP INDEX i;",
    "DROP FUNCTION f();",
    "DROP TRIGGER tr ON t;",
    "ALTER TABLE t DROP COLUMN a;",
    "ALTER TABLE t DROP CONSTRAINT c;",
    "ALTER TABLE t RENAME TO u;",
    "ALTER TABLE t RENAME COLUMN a TO b;",
    "DELETE FROM t WHERE a = 1;",
    "UPDATE t SET a = 1;",
    "TRUNCATE t;",
    "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2;",
    "ALTER TABLE t ADD COLUMN a integer NOT NULL;",
    "ALTER TABLE t ADD COLUMN a integer NOT NULL DEFAULT NULL::integer;",
    "ALTER TABLE t ALTER a TYPE varchar(10);",
    "ALTER TABLE t ALTER a DROP DEFAULT;",
    "CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;",
    "CREATE OR REPLACE VIEW v AS SELECT 1;",
    "REVOKE SELECT ON t FROM someone;",
    "ALTER TYPE e RENAME VALUE 'a' TO 'b';",
    # A constraint refuses the old code's writes that break it, NOT VALID or not.
    "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);",
    "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID;",
    "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id);",
    "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) NOT VALID;",
    "ALTER TABLE t ADD CONSTRAINT u UNIQUE (a);",
    "ALTER TABLE t ADD PRIMARY KEY (a);",
    "ALTER TABLE t ALTER a SET NOT NULL;",
    "ALTER TABLE t ADD COLUMN n int CHECK (a > 0);",
    # A data-modifying WITH is as destructive as the statement it holds.
    "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO n SELECT * FROM d;",
    "CREATE TABLE n (a int);\nWITH u AS (UPDATE t SET a = 1 RETURNING a) "
    "UPDATE n SET a = 2 FROM u;",
    # A table "created" IF NOT EXISTS may be the old one.
    "CREATE TABLE IF NOT EXISTS t (a int);\nUPDATE t SET a = 1;",
    "CREATE TABLE IF NOT EXISTS t (a int);\nALTER TABLE t DROP COLUMN b;",
    # After search_path or the role changes, a name may mean the old table.
    "SET search_path = s;\nCREATE TABLE t (a int);\nRESET search_path;\nDELETE FROM t;",
    "CREATE TABLE t (a int);\nSET search_path = s;\nTRUNCATE t;",
    "RESET ALL;\nCREATE TABLE t (a int);\nTRUNCATE t;",
    "SET ROLE other;\nCREATE TABLE t (a int);\nRESET ROLE;\nUPDATE t SET a = 1;",
])
def test_destructive_statements(sql: str) -> None:
    assert class_of_sql(sql) == mc.DESTRUCTIVE, verdict(sql)


@pytest.mark.parametrize("sql", [
    "DO $$ BEGIN NULL; END $$;",
    "SELECT setval('s', 1);",
    "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE PROCEDURE f();",
    "ALTER TABLE t OWNER TO someone;",
    # A new overload captures the old code's calls of the name.
    "CREATE FUNCTION f(integer) RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;",
    "CREATE PROCEDURE p(integer) AS $$ SELECT 1 $$ LANGUAGE sql;",
    "CREATE AGGREGATE a (int) (sfunc = int4pl, stype = int);",
])
def test_anything_without_a_rule_is_not_proven(sql: str) -> None:
    v = verdict(sql)
    assert (v.cls, v.what.startswith("not proven")) == (mc.DESTRUCTIVE, True), v


def test_the_worst_statement_decides_with_its_line() -> None:
    sql = "CREATE TABLE n (a int);\nCREATE INDEX i ON t (a);\n\nDROP TABLE old;\nDROP TABLE x;\n"
    v = verdict(sql)
    assert (v.cls, v.line, v.what) == (mc.DESTRUCTIVE, 4, "DROP TABLE")


def test_without_pglast_every_migration_is_not_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgparse, "available", lambda: False)
    found = mc.verdicts(split("CREATE TABLE n (a int);\nCOMMENT ON TABLE n IS 'x';\n"))
    assert len(found) == 1
    assert found[0].cls == mc.DESTRUCTIVE
    assert "pglast is not installed" in found[0].what


def write(tmp_path: Path, text: str, name: str = "20100101-01.sql") -> cls.Classified:
    path = tmp_path / name
    path.write_text(text)
    return cls.classify(migration_for(path))


def test_declared_stricter_class_stands(tmp_path: Path) -> None:
    c = class_of(write(tmp_path, "-- ivle-maint: destructive\nCREATE TABLE n (a int);\n"))
    assert (c.cls, c.refused) == (mc.DESTRUCTIVE, False)
    assert "declared in its header; found additive" in c.line()


def test_declared_milder_class_is_refused_in_one_line(tmp_path: Path) -> None:
    c = class_of(write(tmp_path, "-- ivle-maint: additive\nDROP TABLE t;\n"))
    assert c.refused
    assert c.cls == mc.DESTRUCTIVE
    line = c.line()
    assert "\n" not in line
    assert "declares additive but it is destructive (line 2: DROP TABLE)" in line
    assert "--accept-class 20100101-01" in line


def test_accept_class_takes_the_declared_class(tmp_path: Path) -> None:
    c = class_of(write(tmp_path, "-- ivle-maint: locking\nDROP TABLE t;\n"), ["20100101-01"])
    assert (c.refused, c.overrides, c.cls) == (False, True, mc.LOCKING)
    assert "accepted over destructive" in c.line()


def test_two_class_directives_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "20100101-01.sql"
    path.write_text("-- ivle-maint: additive\n-- ivle-maint: destructive\nSELECT 1;\n")
    with pytest.raises(cls.MaintError, match="line 2: a second class directive"):
        cls.classify(migration_for(path))


def test_a_file_that_cannot_run_is_not_proven(tmp_path: Path) -> None:
    path = tmp_path / "20100101-01.sql"
    path.write_text("SELEC 1;\n")
    c = class_of(migration_for(path))
    assert c.cls == mc.DESTRUCTIVE
    assert c.found.what.startswith("not proven:")
    assert "syntax error" in c.found.what


def test_release_class_is_the_worst_with_the_migrations_that_decided_it() -> None:
    classes = [mc.MigrationClass(key, mc.Verdict(found, "x"))
               for key, found in (("a", mc.ADDITIVE), ("b", mc.LOCKING), ("c", mc.LOCKING))]
    top, deciding = mc.release_class(classes)
    assert (top, [c.key for c in deciding]) == (mc.LOCKING, ["b", "c"])


def test_who_prefers_the_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setenv("LOGNAME", "root")
    assert mc.who() == "alice"
    monkeypatch.delenv("SUDO_USER")
    assert mc.who() == "root"


# Property tests: statements from a small grammar of templates.

IDENTIFIERS = st.sampled_from(["t", "login", "offering", '"Mixed Case"', "public.t", "s.x"])
COLUMNS = st.sampled_from(["a", "b", "state", '"select"'])
TYPES = st.sampled_from(["integer", "text", "varchar(10)", "boolean", "timestamptz",
                         "numeric(5,2)", "bigint", "serial", "uuid", "text[]"])
DEFAULTS = st.sampled_from(["", " DEFAULT 0", " DEFAULT 'x'", " DEFAULT now()",
                            " DEFAULT random()", " DEFAULT NULL", " NOT NULL",
                            " DEFAULT 1 NOT NULL", " UNIQUE", " REFERENCES u (id)",
                            " CHECK (a > 0)", " PRIMARY KEY"])

SAFE_TEMPLATES = [
    "CREATE TABLE {t} ({c} {ty}{d})",
    "ALTER TABLE {t} ADD COLUMN {c} {ty}{d}",
    "ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT 1",
    "CREATE INDEX ON {t} ({c})",
    "CREATE INDEX CONCURRENTLY ON {t} ({c})",
    "ALTER TABLE {t} ADD CONSTRAINT k CHECK ({c} IS NOT NULL) NOT VALID",
    "ALTER TABLE {t} ADD CONSTRAINT k CHECK ({c} IS NOT NULL)",
    "ALTER TABLE {t} VALIDATE CONSTRAINT k",
    "ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL",
    "COMMENT ON COLUMN {t}.{c} IS 'x'",
    "GRANT SELECT ON {t} TO someone",
    "INSERT INTO {t} ({c}) VALUES (1)",
    "CREATE FUNCTION f_{c}() RETURNS {ty} AS $$ SELECT NULL $$ LANGUAGE sql",
    "SELECT {c} FROM {t}",
    "LOCK TABLE {t}",
]
# Other statements: classified without a crash, whatever their class.
OTHER_TEMPLATES = [
    "CREATE TRIGGER tr AFTER INSERT ON {t} FOR EACH ROW EXECUTE PROCEDURE f_{c}()",
    "VACUUM {t}", "VACUUM FULL {t}", "ANALYZE {t}", "CLUSTER {t}", "REINDEX TABLE {t}",
    "REFRESH MATERIALIZED VIEW {t}", "CREATE VIEW v_{c} AS SELECT {c} FROM {t}",
    "CREATE OR REPLACE VIEW v_{c} AS SELECT {c} FROM {t}", "REVOKE ALL ON {t} FROM someone",
    "DO $$ BEGIN PERFORM 1; END $$", "SET search_path = public", "RESET ALL",
    "ALTER TABLE {t} ALTER COLUMN {c} SET STATISTICS 100", "ALTER TABLE {t} OWNER TO someone",
    "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY", "CREATE SEQUENCE s_{c}",
    "ALTER SEQUENCE s_{c} OWNED BY {t}.{c}", "CREATE TYPE e_{c} AS ENUM ('a', 'b')",
    "ALTER TYPE e_{c} ADD VALUE 'c'", "CREATE SCHEMA s_{c}", "NOTIFY ch_{c}",
    "INSERT INTO {t} ({c}) SELECT {c} FROM {t} ON CONFLICT DO NOTHING",
    "ALTER TABLE {t} ADD COLUMN {c} {ty} GENERATED ALWAYS AS (1) STORED",
    "ALTER TABLE {t} ADD COLUMN {c} integer GENERATED ALWAYS AS IDENTITY",
    "CALL p_{c}()", "COPY {t} TO STDOUT", "EXPLAIN SELECT 1", "CHECKPOINT",
]
# Each drops, renames, deletes, updates or narrows: never additive.
HARMFUL_TEMPLATES = [
    "DROP TABLE {t}",
    "DROP TABLE IF EXISTS {t} CASCADE",
    "ALTER TABLE {t} DROP COLUMN {c}",
    "ALTER TABLE {t} DROP CONSTRAINT k",
    "ALTER TABLE {t} RENAME TO other",
    "ALTER TABLE {t} RENAME COLUMN {c} TO other",
    "ALTER TABLE {t} RENAME CONSTRAINT k TO other",
    "DELETE FROM {t}",
    "DELETE FROM {t} WHERE {c} IS NULL",
    "UPDATE {t} SET {c} = DEFAULT",
    "TRUNCATE {t}",
    "ALTER TABLE {t} ALTER COLUMN {c} TYPE {ty}",
    "ALTER TABLE {t} ALTER COLUMN {c} TYPE {ty} USING {c}::{ty}",
    "DROP INDEX {t}",
    "DROP FUNCTION f_{c}()",
    "DROP TRIGGER tr ON {t}",
    "CREATE OR REPLACE FUNCTION f_{c}() RETURNS {ty} AS $$ SELECT NULL $$ LANGUAGE sql",
    "ALTER TABLE {t} ADD COLUMN {c} {ty} NOT NULL",
]


def render(template: str, t: str, c: str, ty: str, d: str) -> str:
    return template.format(t=t, c=c, ty=ty, d=d) + ";"


def statements(templates: list[str]) -> st.SearchStrategy[str]:
    return st.builds(render, st.sampled_from(templates), IDENTIFIERS, COLUMNS, TYPES, DEFAULTS)


def parses(sql: str) -> bool:
    try:
        pgparse.parse(sql)
    except pgparse.ParseFailure:
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(statements(SAFE_TEMPLATES + HARMFUL_TEMPLATES + OTHER_TEMPLATES),
                min_size=1, max_size=6))
def test_any_parsed_statement_is_classified_without_a_crash(sqls: list[str]) -> None:
    accepted = [sql for sql in sqls if parses(sql)]
    assume(accepted)
    found = mc.verdicts(split("\n".join(accepted)))
    assert len(found) == len(accepted)
    assert all(v.cls in mc.CLASSES and v.line is not None and v.what for v in found)


@settings(max_examples=300, deadline=None)
@given(statements(HARMFUL_TEMPLATES), st.lists(statements(SAFE_TEMPLATES), max_size=3))
def test_nothing_that_drops_renames_deletes_updates_or_narrows_is_additive(
        harmful: str, others: list[str]) -> None:
    text = "\n".join([*others, harmful])
    # Only when its table existed before this migration: one created here is fair game.
    if any(o.startswith("CREATE TABLE") for o in others):
        text = "\n".join([harmful, *others])
    assert mc.verdicts(split(harmful))[0].cls != mc.ADDITIVE
    assert mc.deciding(mc.verdicts(split(text))).cls != mc.ADDITIVE


def test_a_long_release_line_names_a_few_keys_and_counts_the_rest() -> None:
    assert mc.listed(["a", "b"]) == "a, b"
    assert mc.listed([str(n) for n in range(8)]) == "0, 1, 2, 3, 4 and 3 more"

"""Sort a migration into a release class: can the old code run beside it?

Not to be confused with classify.py, which decides how a file *runs*
(its transaction mode).  This module decides what running it does to the
old code and to the site while it runs, from PostgreSQL's own parse tree
(pglast), statement by statement:

- ``additive``: the old code keeps working, and no statement holds a lock
  that blocks readers or writers for longer than a catalog change;
- ``locking``: additive for the old code, but a statement scans or
  rewrites a table under a lock that blocks writers (or readers) while it
  does; each such verdict names the safe form;
- ``destructive``: the old code can break (a drop, a rename, rows
  deleted or changed, a narrowing or unknown type change...), and
  everything the rules cannot prove additive or locking ("not proven").

A migration's class is its worst statement's; the first statement of
that class decides it.  Without pglast every migration is "not proven".
The rules, with PostgreSQL's lock level for each, are the table in
doc/migrations.md.  Offline, so the server is assumed to be PostgreSQL 11
or newer (a constant default needs no rewrite); bookworm ships 15.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import pgparse
from .sqlsplit import Statement

ADDITIVE = "additive"
LOCKING = "locking"
DESTRUCTIVE = "destructive"
CLASSES = (ADDITIVE, LOCKING, DESTRUCTIVE)  # best to worst
_RANK = {name: rank for rank, name in enumerate(CLASSES)}

NO_TRANSACTION_HINT = "in a file whose header says '-- ivle-maint: no-transaction'"


def worse(a: str, b: str) -> bool:
    """Class a is worse than class b."""
    return _RANK[a] > _RANK[b]


def worst(classes: Iterable[str]) -> str:
    return max(classes, key=_RANK.__getitem__, default=ADDITIVE)


@dataclass(frozen=True)
class Verdict:
    """One statement's class and why; safe: the form that would be better."""

    cls: str
    what: str
    line: int | None = None
    safe: str = ""

    def describe(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.what}" + (f": {self.safe}" if self.safe else "")


def _additive(what: str) -> Verdict:
    return Verdict(ADDITIVE, what)


def _locking(what: str, safe: str) -> Verdict:
    return Verdict(LOCKING, what, safe=safe)


def _destructive(what: str) -> Verdict:
    return Verdict(DESTRUCTIVE, what)


def _not_proven(what: str) -> Verdict:
    return Verdict(DESTRUCTIVE, f"not proven: {what}")


def _name(node: Any) -> str:
    return type(node).__name__


def _enum(value: Any) -> str:
    """An enum member's name, the same across pglast versions (the numbers differ)."""
    return str(getattr(value, "name", value))


def _nodes(node: Any) -> Iterable[Any]:
    """Every parse-tree node under NODE (not NODE itself)."""
    stack = [node]
    while stack:
        current = stack.pop()
        for attr in getattr(type(current), "__slots__", ()):
            value = getattr(current, attr, None)
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if type(item).__module__.startswith("pglast"):
                    yield item
                    stack.append(item)


def _relation(rangevar: Any) -> str | None:
    if rangevar is None:
        return None
    schema = getattr(rangevar, "schemaname", None)
    name = getattr(rangevar, "relname", None)
    return f"{schema}.{name}" if schema else name


# Default expressions that are not volatile, so PostgreSQL 11+ stores them
# once in the catalog instead of rewriting the table.
_FAST_DEFAULTS = {"A_Const", "SQLValueFunction"}
_SERIAL = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}


# Built-in types: a column of one is added without a rewrite.  Any other
# type may be a domain with a CHECK or NOT NULL, and PostgreSQL then
# rewrites the table to check every row (even without a default).
_BUILTIN_TYPES = {
    "text", "varchar", "bpchar", "char", "name", "int2", "int4", "int8", "smallint",
    "integer", "int", "bigint", "numeric", "decimal", "real", "float4", "float8", "bool",
    "boolean", "date", "time", "timetz", "timestamp", "timestamptz", "interval", "uuid",
    "json", "jsonb", "bytea", "inet", "cidr", "macaddr", "macaddr8", "money", "xml", "bit",
    "varbit", "tsvector", "tsquery", "oid", "point", "line", "lseg", "box", "path",
    "polygon", "circle", "int4range", "int8range", "numrange", "daterange", "tsrange",
    "tstzrange",
}
# Keys of new_tables that are not tables: a type created in this migration,
# and "names no longer mean what they did" (search_path or the role changed).
_NEW_TYPE = "\0type "
_NAMES_MOVED = "\0names moved"


def _plain_type(type_name: Any, new_tables: set[str]) -> bool:
    """A built-in type, or an enum or composite type created in this migration."""
    names = [getattr(n, "sval", "") for n in getattr(type_name, "names", None) or ()]
    if names[:1] == ["pg_catalog"] or (len(names) == 1 and names[0] in _BUILTIN_TYPES):
        return True
    return ".".join(names) in {k.removeprefix(_NEW_TYPE) for k in new_tables
                               if k.startswith(_NEW_TYPE)}


def _columns_named(expr: Any) -> set[str]:
    found = set()
    for node in (expr, *_nodes(expr)):
        if _name(node) == "ColumnRef":
            fields = getattr(node, "fields", None) or ()
            found.add(str(getattr(fields[-1], "sval", "*")) if fields else "*")
    return found


def _constant(expr: Any) -> bool:
    while _name(expr) == "TypeCast":
        expr = expr.arg
    return _name(expr) in _FAST_DEFAULTS


def _null(expr: Any) -> bool:
    while _name(expr) == "TypeCast":
        expr = expr.arg
    return _name(expr) == "A_Const" and bool(getattr(expr, "isnull", False))


def _add_column(column: Any, new_tables: set[str]) -> Verdict:
    name = getattr(column, "colname", "?")
    constraints = [c for c in (getattr(column, "constraints", None) or ())]
    kinds = {_enum(c.contype) for c in constraints}
    default = next((c.raw_expr for c in constraints if _enum(c.contype) == "CONSTR_DEFAULT"),
                   None)
    type_names = getattr(getattr(column, "typeName", None), "names", None) or ()
    type_name = getattr(type_names[-1], "sval", "") if type_names else ""
    not_null = "CONSTR_NOTNULL" in kinds or "CONSTR_PRIMARY" in kinds or \
        bool(getattr(column, "is_not_null", False))
    if not_null and (default is None or _null(default)):
        return _destructive(f"ADD COLUMN {name} NOT NULL without a default: the old code's "
                            "INSERTs fail")
    if type_name in _SERIAL or kinds & {"CONSTR_IDENTITY", "CONSTR_GENERATED"}:
        return _locking(f"ADD COLUMN {name} {type_name or 'GENERATED'} fills every row: the "
                        "table is rewritten under ACCESS EXCLUSIVE",
                        "add a nullable column, fill it in batches, then set its default")
    if not _plain_type(getattr(column, "typeName", None), new_tables):
        return _locking(f"ADD COLUMN {name} of type {type_name or '?'}, which may be a domain "
                        "with a constraint: PostgreSQL then rewrites the table under ACCESS "
                        "EXCLUSIVE", "add it as the domain's base type, then change it in "
                        "a maintenance window")
    if default is not None and not _constant(default):
        return _locking(f"ADD COLUMN {name} with a default that may be volatile rewrites the "
                        "table under ACCESS EXCLUSIVE",
                        "add it with a constant default (or none), then SET DEFAULT")
    if kinds & {"CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION"}:
        return _locking(f"ADD COLUMN {name} with a unique index builds it under ACCESS "
                        "EXCLUSIVE", "add the column, CREATE UNIQUE INDEX CONCURRENTLY "
                        f"{NO_TRANSACTION_HINT}, then ADD CONSTRAINT ... USING INDEX")
    checks = [c.raw_expr for c in constraints if _enum(c.contype) == "CONSTR_CHECK"]
    if any(_columns_named(e) - {name} for e in checks):
        return _destructive(f"ADD COLUMN {name} with a CHECK on other columns: the old "
                            "code's writes may break it")
    if kinds & {"CONSTR_CHECK", "CONSTR_FOREIGN"}:
        return _locking(f"ADD COLUMN {name} with a CHECK or REFERENCES validates every row "
                        "under a lock that blocks writes",
                        "add the column, then ADD CONSTRAINT ... NOT VALID and VALIDATE "
                        "CONSTRAINT")
    known = {"CONSTR_DEFAULT", "CONSTR_NULL", "CONSTR_NOTNULL"}
    if kinds - known:
        return _not_proven(f"ADD COLUMN {name} with {', '.join(sorted(kinds - known))}")
    return _additive(f"ADD COLUMN {name}" + (" with a constant default" if default else ""))


def _add_constraint(con: Any) -> Verdict:
    # A new constraint on an existing table refuses the old code's writes
    # that break it (NOT VALID spares only the rows already there), as
    # ADD COLUMN ... NOT NULL without a default does: destructive.
    kind = _enum(getattr(con, "contype", None))
    if kind == "CONSTR_UNIQUE" and getattr(con, "indexname", None):
        return _additive("ADD CONSTRAINT UNIQUE USING INDEX (the index already holds)")
    labels = {"CONSTR_CHECK": "CHECK", "CONSTR_FOREIGN": "FOREIGN KEY",
              "CONSTR_PRIMARY": "PRIMARY KEY", "CONSTR_UNIQUE": "UNIQUE",
              "CONSTR_EXCLUSION": "EXCLUDE", "CONSTR_NOTNULL": "NOT NULL"}
    if kind in labels:
        valid = " ... NOT VALID" if getattr(con, "skip_validation", False) else ""
        return _destructive(f"ADD CONSTRAINT {labels[kind]}{valid}: the old code's writes "
                            "that break it fail")
    return _not_proven(f"ADD CONSTRAINT {kind}")


# ALTER TABLE subcommands that only touch the catalog and keep the old code working.
_CATALOG_ONLY = {
    "AT_DropNotNull": "DROP NOT NULL",
    "AT_SetStatistics": "SET STATISTICS",
    "AT_SetStorage": "SET STORAGE",
    "AT_SetOptions": "ALTER COLUMN SET (...)",
    "AT_ResetOptions": "ALTER COLUMN RESET (...)",
    "AT_SetRelOptions": "SET (...)",
    "AT_ResetRelOptions": "RESET (...)",
    "AT_ClusterOn": "CLUSTER ON",
    "AT_DropCluster": "SET WITHOUT CLUSTER",
    "AT_ValidateConstraint": "VALIDATE CONSTRAINT (SHARE UPDATE EXCLUSIVE)",
}
_REWRITES = {
    "AT_SetTableSpace": "SET TABLESPACE",
    "AT_SetLogged": "SET LOGGED",
    "AT_SetUnLogged": "SET UNLOGGED",
    "AT_SetAccessMethod": "SET ACCESS METHOD",
}


def _subcommand(sub: str, cmd: Any) -> str:
    """AT_DropColumn and its name -> 'DROP COLUMN nick', for people."""
    words = "".join(f" {c}" if c.isupper() else c for c in sub.removeprefix("AT_")).strip()
    name = getattr(cmd, "name", None)
    return words.upper() + (f" {name}" if name else "")


def _alter_table_command(cmd: Any, new_tables: set[str]) -> Verdict:
    sub = _enum(cmd.subtype)
    definition = getattr(cmd, "def_", None)
    if sub == "AT_AddColumn":
        return _add_column(definition, new_tables)
    if sub == "AT_AddConstraint":
        return _add_constraint(definition)
    if sub == "AT_ColumnDefault":
        if definition is None:
            return _destructive(f"ALTER COLUMN {cmd.name} DROP DEFAULT: the old code's "
                                "INSERTs may rely on it")
        return _additive(f"ALTER COLUMN {cmd.name} SET DEFAULT")
    if sub in _CATALOG_ONLY:
        return _additive(_CATALOG_ONLY[sub])
    if sub == "AT_SetNotNull":
        return _destructive(f"ALTER COLUMN {cmd.name} SET NOT NULL: the old code's writes of "
                            "NULL fail (and the table is scanned under ACCESS EXCLUSIVE)")
    if sub in _REWRITES:
        return _locking(f"{_REWRITES[sub]} rewrites the table under ACCESS EXCLUSIVE",
                        "run it in a maintenance window")
    if sub == "AT_AlterColumnType":
        return _destructive(f"ALTER COLUMN {cmd.name} TYPE: the current type is not in the "
                            "migration, so it may narrow (and rewrites under ACCESS "
                            "EXCLUSIVE): add a new column, fill it, switch, then drop")
    if sub.startswith("AT_Drop"):
        return _destructive(f"{_subcommand(sub, cmd)}: the old code may use it")
    return _not_proven(_subcommand(sub, cmd))


def _alter_table(node: Any, new_tables: set[str]) -> Verdict:
    table = _relation(node.relation)
    if table in new_tables:
        return _additive(f"ALTER TABLE {table}, created in this migration")
    verdicts = [_alter_table_command(cmd, new_tables) for cmd in node.cmds or ()]
    if not verdicts:
        return _not_proven("ALTER TABLE without commands")
    worst_one = max(verdicts, key=lambda v: _RANK[v.cls])  # the first of the worst
    proof, what = worst_one.what.rpartition("not proven: ")[1:]
    return Verdict(worst_one.cls, f"{proof}ALTER TABLE {table} {what}", safe=worst_one.safe)


def _index(node: Any, new_tables: set[str]) -> Verdict:
    table = _relation(node.relation)
    if getattr(node, "concurrent", False):
        return _additive("CREATE INDEX CONCURRENTLY (SHARE UPDATE EXCLUSIVE)")
    if table in new_tables:
        return _additive(f"CREATE INDEX on {table}, created in this migration")
    return _locking(f"CREATE INDEX on {table} without CONCURRENTLY holds SHARE: writes wait "
                    "while it builds", f"CREATE INDEX CONCURRENTLY {NO_TRANSACTION_HINT}")


def _options(node: Any, field: str) -> set[str]:
    return {getattr(d, "defname", "") for d in getattr(node, field, None) or ()}


def _replaces(node: Any, what: str) -> Verdict | None:
    if getattr(node, "replace", False):
        return _destructive(f"CREATE OR REPLACE {what}: the old code may rely on what it "
                            "replaces")
    return None


def _on_new_table(node: Any, new_tables: set[str], what: str) -> Verdict:
    table = _relation(getattr(node, "relation", None))
    if table in new_tables:
        return _additive(f"{what} on {table}, created in this migration")
    return _destructive(f"{what} of existing rows ({table}): the old code may rely on them")


# Statements that only create something new (the old code never names it).
_CREATES = {
    "CreateSeqStmt": "CREATE SEQUENCE",
    "CreateEnumStmt": "CREATE TYPE ... AS ENUM",
    "CompositeTypeStmt": "CREATE TYPE ... AS (...)",
    "CreateDomainStmt": "CREATE DOMAIN",
    "CreateSchemaStmt": "CREATE SCHEMA",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "CreateTableAsStmt": "CREATE TABLE AS / MATERIALIZED VIEW",
    "CommentStmt": "COMMENT",
    "VariableSetStmt": "SET",
    "NotifyStmt": "NOTIFY",
    "TransactionStmt": "transaction control",
}


_DML = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
# Settings after which an unqualified name may mean another table.
_NAME_SETTINGS = {"search_path", "role", "session_authorization"}
# Functions the old code cannot call by name: a new one overloads nothing it calls.
_TRIGGER_TYPES = {"trigger", "event_trigger"}


def statement_verdict(node: Any, new_tables: set[str]) -> Verdict:
    """One parsed statement's verdict; CREATE TABLE adds to new_tables.  A
    statement inside it (a data-modifying WITH) counts as much as it does."""
    found = _statement_verdict(node, new_tables)
    for inner in _nodes(node):
        if _name(inner) in _DML:
            v = _statement_verdict(inner, new_tables)
            if worse(v.cls, found.cls):
                found = Verdict(v.cls, f"{v.what}, inside a {_name(node)}", safe=v.safe)
    return found


def _names_moved(node: Any, new_tables: set[str]) -> None:
    """A setting that changes what an unqualified name means: the tables
    created so far may no longer be the ones the next statements name."""
    kind = _enum(getattr(node, "kind", ""))
    if _name(node) == "DiscardStmt" or kind == "VAR_RESET_ALL" or \
            getattr(node, "name", None) in _NAME_SETTINGS:
        new_tables.clear()
        new_tables.add(_NAMES_MOVED)


def _statement_verdict(node: Any, new_tables: set[str]) -> Verdict:
    kind = _name(node)
    if kind in ("VariableSetStmt", "DiscardStmt"):
        _names_moved(node, new_tables)
    if kind in ("CreateEnumStmt", "CompositeTypeStmt") and _NAMES_MOVED not in new_tables:
        if kind == "CompositeTypeStmt":
            type_name = _relation(getattr(node, "typevar", None)) or ""
        else:
            type_name = ".".join(getattr(n, "sval", "") for n in node.typeName or ())
        new_tables.add(f"{_NEW_TYPE}{type_name}")
    if kind in _CREATES:
        return _additive(_CREATES[kind])
    if kind == "CreateStmt":
        table = _relation(node.relation)
        if getattr(node, "partbound", None) is not None:
            return _locking(f"CREATE TABLE {table} PARTITION OF locks its parent",
                            "run it in a maintenance window")
        # IF NOT EXISTS may leave the old table in place; after a change of
        # search_path or role the next statements' names may mean another.
        if table and not getattr(node, "if_not_exists", False) and \
                _NAMES_MOVED not in new_tables:
            new_tables.add(table)
        return _additive(f"CREATE TABLE {table}")
    if kind == "AlterTableStmt":
        return _alter_table(node, new_tables)
    if kind == "IndexStmt":
        return _index(node, new_tables)
    if kind == "CreateFunctionStmt":
        returns = getattr(getattr(node, "returnType", None), "names", None) or ()
        if returns and getattr(returns[-1], "sval", "") in _TRIGGER_TYPES:
            return _replaces(node, "FUNCTION") or _additive("CREATE FUNCTION ... RETURNS "
                                                            "trigger")
        return _replaces(node, "FUNCTION") or _not_proven(
            "CREATE FUNCTION may overload one the old code calls, whose calls then run "
            "the new one")
    if kind == "ViewStmt":
        return _replaces(node, "VIEW") or _additive("CREATE VIEW")
    if kind == "DefineStmt":
        if _enum(getattr(node, "kind", "")) in ("OBJECT_AGGREGATE", "OBJECT_OPERATOR"):
            return _replaces(node, "AGGREGATE") or _not_proven(
                "CREATE AGGREGATE or OPERATOR may overload one the old code uses")
        return _replaces(node, "type") or _additive("CREATE type")
    if kind in {"GrantStmt", "GrantRoleStmt"}:
        if getattr(node, "is_grant", False):
            return _additive("GRANT")
        return _destructive("REVOKE: the old code may need the privilege")
    if kind == "AlterEnumStmt":
        if getattr(node, "oldVal", None):
            return _destructive("ALTER TYPE ... RENAME VALUE: the old code uses the old name")
        return _additive("ALTER TYPE ... ADD VALUE")
    if kind == "InsertStmt":
        conflict = getattr(node, "onConflictClause", None)
        if conflict is not None and _enum(conflict.action) == "ONCONFLICT_UPDATE":
            return _on_new_table(node, new_tables, "INSERT ... ON CONFLICT DO UPDATE")
        return _additive("INSERT")
    if kind in ("UpdateStmt", "DeleteStmt"):
        return _on_new_table(node, new_tables, "UPDATE" if kind == "UpdateStmt" else "DELETE")
    if kind == "TruncateStmt":
        tables = [_relation(r) for r in node.relations or ()]
        if tables and all(t in new_tables for t in tables):
            return _additive("TRUNCATE of tables created in this migration")
        return _destructive("TRUNCATE of existing rows")
    if kind == "DropStmt":
        return _destructive(f"DROP {_enum(node.removeType).removeprefix('OBJECT_')}")
    if kind == "RenameStmt":
        return _destructive(f"RENAME of a {_enum(node.renameType).removeprefix('OBJECT_')}: "
                            "the old code uses the old name")
    if kind == "CreateTrigStmt":
        return _replaces(node, "TRIGGER") or _not_proven(
            "CREATE TRIGGER changes what the old code's writes do")
    if kind == "VacuumStmt":
        if "full" in _options(node, "options"):
            return _locking("VACUUM FULL rewrites under ACCESS EXCLUSIVE", "plain VACUUM")
        return _additive("VACUUM / ANALYZE (SHARE UPDATE EXCLUSIVE)")
    if kind == "ReindexStmt":
        if "concurrently" in _options(node, "params") or getattr(node, "concurrent", False):
            return _additive("REINDEX CONCURRENTLY")
        return _locking("REINDEX blocks writes to the table", f"REINDEX CONCURRENTLY "
                        f"{NO_TRANSACTION_HINT}")
    if kind == "RefreshMatViewStmt":
        if getattr(node, "concurrent", False):
            return _additive("REFRESH MATERIALIZED VIEW CONCURRENTLY")
        return _locking("REFRESH MATERIALIZED VIEW blocks its readers",
                        "REFRESH MATERIALIZED VIEW CONCURRENTLY")
    if kind == "ClusterStmt":
        return _locking("CLUSTER rewrites under ACCESS EXCLUSIVE", "run it in a maintenance "
                        "window")
    if kind == "LockStmt":
        return _locking("LOCK TABLE holds the lock until the migration commits",
                        "leave locking to the statements themselves")
    return _not_proven(f"no rule for {kind}")


def _parse(statement: Statement) -> tuple[Any, ...] | str:
    """The parse trees of one statement, or the parser's complaint."""
    try:
        return pgparse.parse(statement.text)
    except pgparse.ParseFailure as exc:
        return str(exc)


# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE (writers go on).
_WEAK_ALTERS = {"AT_SetStatistics", "AT_SetOptions", "AT_ResetOptions", "AT_ValidateConstraint",
                "AT_ClusterOn", "AT_DropCluster", "AT_SetRelOptions", "AT_ResetRelOptions"}
# Statements that read tables they name (beyond an INSERT's target).
_READERS = {"InsertStmt", "SelectStmt", "CreateTableAsStmt", "UpdateStmt", "DeleteStmt",
            "MergeStmt", "CopyStmt", "RefreshMatViewStmt"}


def _write_locked(node: Any, new_tables: set[str]) -> list[str]:
    """Existing tables this statement locks against writers until the transaction ends."""
    kind = _name(node)
    if kind == "AlterTableStmt":
        subs = {_enum(c.subtype) for c in node.cmds or ()}
        return [] if subs <= _WEAK_ALTERS else [_relation(node.relation) or "?"]
    if kind == "IndexStmt" and not getattr(node, "concurrent", False):
        return [_relation(node.relation) or "?"]
    if kind == "LockStmt":
        mode = int(getattr(node, "mode", 8) or 8)
        return [_relation(r) or "?" for r in node.relations or ()] if mode >= 5 else []
    return []


def _reads(node: Any) -> set[str]:
    """The tables a statement scans: those a reading statement names, and
    the table of an ALTER TABLE that validates a constraint."""
    kind = _name(node)
    if kind == "AlterTableStmt":
        subs = {_enum(c.subtype) for c in node.cmds or ()}
        return {_relation(node.relation) or "?"} if "AT_ValidateConstraint" in subs else set()
    if kind not in _READERS:
        return set()
    target = getattr(node, "relation", None) if kind == "InsertStmt" else None
    return {_relation(n) or "?" for n in _nodes(node) if _name(n) == "RangeVar" and n is not target}


def _begins(node: Any) -> bool | None:
    """True for BEGIN, False for COMMIT or ROLLBACK, None for anything else."""
    if _name(node) != "TransactionStmt":
        return None
    kind = _enum(node.kind)
    if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        return True
    return False if kind in ("TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK") else None


def verdicts(statements: Sequence[Statement], one_transaction: bool = True) -> list[Verdict]:
    """Every statement's verdict, with its line, in order.  In ONE_TRANSACTION
    (every mode but no-transaction, whose statements commit one by one unless
    its own BEGIN holds them) a lock outlives its statement: a later scan of
    the table runs under it."""
    if not pgparse.available():
        line = statements[0].line if statements else None
        return [Verdict(DESTRUCTIVE, "not proven: pglast is not installed (install "
                                     "python3-pglast)", line)]
    new_tables: set[str] = set()
    held: dict[str, int] = {}  # table -> the line whose lock keeps its writers waiting
    in_block = one_transaction
    found: list[Verdict] = []
    for statement in statements:
        trees = _parse(statement)
        if isinstance(trees, str):
            found.append(Verdict(DESTRUCTIVE, f"not proven: {trees} (PostgreSQL's parser)",
                                 statement.line))
            continue
        for tree in trees:
            v = statement_verdict(tree, new_tables)
            scanned = sorted(t for t in _reads(tree) if t in held and t not in new_tables)
            if v.cls == ADDITIVE and scanned:
                v = _locking(f"{v.what} reads {scanned[0]} while line {held[scanned[0]]}'s lock "
                             "on it, held until the migration commits, blocks its writers",
                             f"a migration of its own {NO_TRANSACTION_HINT}")
            found.append(Verdict(v.cls, v.what, statement.line, v.safe))
            begins = _begins(tree)
            if begins is not None and not one_transaction:
                in_block = begins
            if in_block:
                held.update((t, statement.line) for t in _write_locked(tree, new_tables)
                            if t not in held)
            else:
                held.clear()
    return found


def deciding(found: Sequence[Verdict]) -> Verdict:
    """The first statement of the worst class (a file without any: additive)."""
    if not found:
        return Verdict(ADDITIVE, "no statements")
    top = worst(v.cls for v in found)
    return next(v for v in found if v.cls == top)


@dataclass(frozen=True)
class MigrationClass:
    """One migration's class: found by the rules, maybe declared by its header
    (``-- ivle-maint: CLASS``), and whether --accept-class took a milder one."""

    key: str
    found: Verdict  # the deciding statement
    declared: str | None = None
    accepted: bool = False  # --accept-class KEY: the declared class stands

    @property
    def refused(self) -> bool:
        """The header declares a milder class than found, not accepted."""
        return self.overrides and not self.accepted

    @property
    def overrides(self) -> bool:
        return self.declared is not None and worse(self.found.cls, self.declared)

    @property
    def cls(self) -> str:
        if self.declared is None or self.refused:
            return self.found.cls
        return self.declared if self.accepted else worst((self.declared, self.found.cls))

    def refusal(self) -> str:
        return (f"migration {self.key}: its header declares {self.declared} but it is "
                f"{self.found.cls} ({self.found.describe()}): correct the header, or accept "
                f"it with --accept-class {self.key}")

    def line(self) -> str:
        """KEY, class, and what decided it, for `db classify` and the plan."""
        if self.refused:
            return f"{self.key:<13}{'refused':<12} {self.refusal()}"
        why = self.found.describe()
        if self.declared is not None and self.declared != self.found.cls:
            how = "accepted over" if self.accepted else "declared in its header; found"
            why = f"{how} {self.found.cls}: {why}"
        elif self.declared is not None:
            why = f"declared in its header and found: {why}"
        return f"{self.key:<13}{self.cls:<12} {why}"


def of_migration(key: str, statements: Sequence[Statement], directives: Iterable[str] = (),
                 accept: Iterable[str] = (), one_transaction: bool = True) -> MigrationClass:
    """KEY's class from its statements and header directives; accept: the
    keys whose milder declared class --accept-class takes."""
    declared = next((d for d in directives if d in CLASSES), None)
    found = deciding(verdicts(statements, one_transaction))
    return MigrationClass(key, found, declared, key in set(accept))


def release_class(classes: Sequence[MigrationClass]) -> tuple[str, list[MigrationClass]]:
    """The release's class (its worst migration's) and the migrations of that class."""
    top = worst(c.cls for c in classes)
    return top, [c for c in classes if c.cls == top]


def listed(keys: Sequence[str], shown: int = 5) -> str:
    """A few keys, and how many more: the release line stays one readable line."""
    more = len(keys) - shown
    return ", ".join(keys[:shown]) + (f" and {more} more" if more > 0 else "")


def who() -> str:
    """The person running ivle-maint: the login sudo or su came from, or the uid's name."""
    for variable in ("SUDO_USER", "LOGNAME"):
        name = os.environ.get(variable, "")
        if name and name.isprintable() and len(name) <= 64:
            return name
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"

"""The tables a migration's statements name, from PostgreSQL's own parser.

Before a migration starts, ivle-maint waits for old transactions that hold
a lock on a table it touches (db/old_transactions.py).  Which tables: every
relation the statements name (pglast's parse, offline): FROM and JOIN,
INSERT/UPDATE/DELETE targets, ALTER/CREATE INDEX/LOCK/TRUNCATE/RENAME
targets, DROP and COMMENT ON of tables, views, indexes and sequences.

None means "cannot tell": pglast is not installed, a statement does not
parse, or one runs code whose tables cannot be seen (DO, CALL, EXECUTE).
The caller then checks every table, which is stricter.  Functions a
statement calls are not looked into.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from . import pgparse

# Statements whose tables are inside code the parser does not open.
OPAQUE = frozenset({"DoStmt", "CallStmt", "ExecuteStmt"})
# DROP / COMMENT ON object kinds that name a relation.
RELATION_KINDS = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX",
                            "OBJECT_SEQUENCE", "OBJECT_FOREIGN_TABLE"})


def quoted(*parts: str) -> str:
    """A qualified name as to_regclass() reads it, whatever the characters."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def _names_in_list(node: Any) -> str | None:
    """'"schema"."name"' of a {"List": {"items": [{"String": ...}]}} node."""
    items = node.get("List", {}).get("items", []) if isinstance(node, dict) else []
    parts = [item.get("String", {}).get("sval") for item in items if isinstance(item, dict)]
    if not parts or None in parts:
        return None
    return quoted(*parts[-2:])  # a catalog-qualified name keeps schema.name


def _walk(node: Any, found: set[str]) -> bool:
    """Add the relations under node to found; False when one is opaque."""
    if isinstance(node, list):
        return all(_walk(item, found) for item in node)
    if not isinstance(node, dict):
        return True
    if "relname" in node:  # a RangeVar, wrapped or not
        found.add(quoted(*(p for p in (node.get("schemaname"), node["relname"]) if p)))
    for kind, body in node.items():
        if kind in OPAQUE:
            return False
        if kind == "DropStmt" and body.get("removeType") in RELATION_KINDS:
            found.update(n for n in map(_names_in_list, body.get("objects", [])) if n)
        if kind == "CommentStmt" and body.get("objtype") in RELATION_KINDS:
            name = _names_in_list(body.get("object"))
            if name:
                found.add(name)
        if not _walk(body, found):
            return False
    return True


def touched(statements: Iterable[str]) -> frozenset[str] | None:
    """The quoted names of the relations the statements name; None: cannot tell."""
    if not pgparse.available():
        return None
    try:
        from pglast.parser import ParseError, parse_sql_json
    except ImportError:  # a pglast too old to give its tree as JSON
        return None

    found: set[str] = set()
    for text in statements:
        try:
            tree = json.loads(parse_sql_json(text))
        except ParseError:
            return None
        if not _walk(tree.get("stmts", []), found):
            return None
    return frozenset(found)

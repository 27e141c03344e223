"""The schema as one value: tables, columns, constraints, indexes, views,
sequences and functions of every user schema (not ivle-maint's own tables,
which record each run), so a rollback can prove the schema is the point's."""

from __future__ import annotations

import hashlib
from typing import Any

OWN_TABLES = "ivle_maint_%"

QUERIES = (
    # relations and their columns
    """SELECT n.nspname, c.relname, c.relkind::text, a.attname,
              format_type(a.atttypid, a.atttypmod), a.attnotnull::text
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                                AND NOT a.attisdropped
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
         AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
         AND c.relname NOT LIKE %(own)s""",
    # constraints
    """SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
       FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND c.relname NOT LIKE %(own)s""",
    # indexes
    """SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
       WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
         AND tablename NOT LIKE %(own)s""",
    # functions
    """SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
              md5(p.prosrc)
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')""",
)


def schema_fingerprint(conn: Any) -> str:
    """sha256 over the sorted catalog rows above (the order rows come in is
    not part of the schema)."""
    digest = hashlib.sha256()
    with conn.cursor() as cur:
        for query in QUERIES:
            cur.execute(query, {"own": OWN_TABLES})
            for row in sorted(tuple("" if v is None else str(v) for v in r)
                              for r in cur.fetchall()):
                digest.update(("\x1f".join(row) + "\x1e").encode("utf-8", "replace"))
            digest.update(b"\x1d")
    conn.rollback()
    return digest.hexdigest()

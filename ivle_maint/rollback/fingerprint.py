"""The schema as one value: tables, columns, constraints, indexes, views,
sequences and functions of every user schema (not ivle-maint's own tables,
which record each run), so a rollback can prove the schema is the point's."""

from __future__ import annotations

import hashlib
from typing import Any

from ..pgdriver import psycopg2

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
    # constraints: kind, columns and referenced table from the catalogs
    # (pg_get_constraintdef() of a CHECK waits for a lock on the table)
    """SELECT n.nspname, c.relname, k.conname, k.contype::text, k.conkey::text,
              coalesce(f.relname, ''), k.confkey::text
       FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN pg_class f ON f.oid = k.confrelid
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND c.relname NOT LIKE %(own)s""",
    # indexes, from the catalogs alone: pg_get_indexdef() and pg_get_expr()
    # wait for a lock on the table, and this runs in the outage
    """SELECT n.nspname, c.relname, i.relname, am.amname, x.indisunique::text,
              x.indisprimary::text, x.indkey::text, (x.indexprs IS NULL)::text,
              (x.indpred IS NULL)::text
       FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
       JOIN pg_class i ON i.oid = x.indexrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = i.relam
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND n.nspname NOT LIKE 'pg\\_toast%%' AND c.relname NOT LIKE %(own)s""",
    # functions
    """SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
              md5(p.prosrc)
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')""",
)


# Reading the catalogs takes no lock on a table; should one ever wait (a
# future query, a catalog lock), the fingerprint is given up, not the outage.
LOCK_WAIT = "2s"


def schema_fingerprint(conn: Any) -> str | None:
    """sha256 over the sorted catalog rows above (the order rows come in is
    not part of the schema); None when a catalog read would wait."""
    try:
        return _fingerprint(conn)
    except psycopg2.errors.LockNotAvailable:
        conn.rollback()
        return None


def _fingerprint(conn: Any) -> str:
    digest = hashlib.sha256()
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", [LOCK_WAIT])
        for query in QUERIES:
            cur.execute(query, {"own": OWN_TABLES})
            for row in sorted(tuple("" if v is None else str(v) for v in r)
                              for r in cur.fetchall()):
                digest.update(("\x1f".join(row) + "\x1e").encode("utf-8", "replace"))
            digest.update(b"\x1d")
    conn.rollback()
    return digest.hexdigest()

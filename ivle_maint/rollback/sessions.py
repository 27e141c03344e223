"""The rollback's database sessions: to a named database, or to the maintenance one.

Each is connect.connect()'s (the identity of [database] connect_as, the
gate's environment, bounded connecting, Ctrl-C cancelling the statement on
the server), to another database of the same server.  CREATE, ALTER ...
RENAME and DROP DATABASE run from MAINTENANCE_DB: PostgreSQL renames or
drops no database a session is inside, the caller's own included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

from ..db.connect import ConnectParams, connect
from ..output import RecordingReporter, Reporter

MAINTENANCE_DB = "postgres"  # every cluster has it (initdb), as createdb(1) uses it
CONNECT_WAIT = 10.0  # seconds: the server is up (the rollback runs against it)


def open_session(params: ConnectParams, dbname: str, reporter: Reporter | None,
                 *, autocommit: bool) -> Any:
    """A connection to DBNAME as PARAMS connects (the caller closes it)."""
    conn = connect(dataclasses.replace(params, dbname=dbname), wait_timeout=CONNECT_WAIT,
                   reporter=reporter or RecordingReporter())
    conn.autocommit = autocommit
    return conn


@contextmanager
def maintenance(params: ConnectParams, reporter: Reporter | None = None) -> Iterator[Any]:
    """An autocommit cursor in MAINTENANCE_DB (CREATE DATABASE runs in no transaction)."""
    with closing(open_session(params, MAINTENANCE_DB, reporter, autocommit=True)) as conn, \
            conn.cursor() as cur:
        yield cur


def exists(cur: Any, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
    return cur.fetchone() is not None

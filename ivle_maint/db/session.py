"""A connection to IVLE's database for one library call, optionally
holding the migration lock: what reading the marker and applying
migrations share (db.status, db.migrations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import MaintError
from ..output import Reporter
from ..pgdriver import psycopg2
from . import lock
from .connect import ConnectParams, connect, params_from_settings, pg_reason


@dataclass
class Session:
    params: ConnectParams
    conn: Any


@contextmanager
def session(
    settings: Settings, reporter: Reporter, resume: str | None, *, locked: bool = False,
    terminate_stale_lock: bool = False,
) -> Iterator[Session]:
    """A connection (waiting for the server), optionally holding the lock.

    A database error no step turned into a MaintError (no privilege to
    create the marker, the server gone mid-run) becomes one here.
    """
    params = params_from_settings(settings)
    db = settings["database"]
    conn = connect(params, wait_timeout=db["wait_timeout"], reporter=reporter, resume=resume)
    try:
        if locked:
            lock.acquire(conn, timeout=db["lock_timeout"], reporter=reporter, resume=resume,
                         terminate_stale=terminate_stale_lock)
        yield Session(params, conn)
    except psycopg2.Error as exc:
        why = params.scrub(pg_reason(exc))
        raise MaintError(f"database {params.dbname}: {why}", resume=resume) from None
    finally:
        conn.close()  # also releases the session lock

"""psycopg2 as every module of ivle_maint takes it: loaded once, here,
without Python's ssl module.

psycopg2 imports ssl as it loads, and only so that OpenSSL before 1.1.0
had Python's locking callbacks before libpq's (psycopg2's
libcrypto_threads_init).  Since OpenSSL 1.1.0 (bookworm has 3.0) neither
is needed, as PostgreSQL's documentation of PQinitOpenSSL says, and
libpq does its own TLS whatever Python loaded.  ssl is 5 ms of every
command that reads the database (`db status`, `plan`), so it is kept out
while psycopg2 loads: psycopg2 then leaves OpenSSL's setup to libpq, its
documented fallback.  A module that wants ssl later still gets it.

No other module imports psycopg2 itself (tests/unit/test_import_graph.py):
the first import would decide, wherever it came from.
"""

from __future__ import annotations

import sys


def _load_without_ssl() -> None:
    if "psycopg2._psycopg" in sys.modules or "ssl" in sys.modules:
        return  # loaded already, or ssl is there anyway: nothing to save
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl`: ImportError
    try:
        import psycopg2._psycopg  # noqa: F401
    finally:
        del sys.modules["ssl"]


_load_without_ssl()

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402
import psycopg2.extensions  # noqa: E402
from psycopg2 import sql  # noqa: E402

__all__ = ["psycopg2", "sql"]

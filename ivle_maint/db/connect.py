"""Connect to IVLE's database, waiting (bounded) for a restarting server.

Two ways, chosen by the setting [database] connect_as:

- ``ivle-conf``: host, port, name, username and password from ivle.conf's
  ``[database]``, as IVLE itself connects;
- ``postgres``: as IVLE's upgrade procedure does (``sudo -u postgres psql -d ivle``): over
  the local socket in [database] socket_dir, as the ``postgres`` role.
  Peer authentication checks the connecting process's effective uid when
  it connects, so root switches its effective uid to postgres around
  connect() only.

The password never leaves this process except through pg_dump's own
environment (PGPASSWORD, see db.backup); every error message is scrubbed
of it.

Nothing but these parameters decides the connection and its session: the
environment gate (gates/environment.py) removes libpq's PG* variables,
names no password file, and sends the session's search_path, lock_timeout
and statement_timeout ([database] settings) in the startup packet.  The
waits gate (gates/waits.py) bounds the connecting, tells who blocks a
waiting statement, and cancels a statement on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import liveness
from ..config import Settings
from ..errors import ConfigError, MaintError
from ..gates import environment, waits
from ..output import Reporter
from ..pgdriver import psycopg2

log = logging.getLogger(__name__)

# Texts of connection failures that mean "not up yet": worth waiting for.
_NOT_READY = (
    "connection refused",
    "no such file or directory",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "server closed the connection unexpectedly",
    "timeout expired",
    "resource temporarily unavailable",
    # ALLOW_CONNECTIONS false: a full rollback's swap (rollback/database.py)
    # closes the live database while it renames it, for well under a second.
    "is not currently accepting connections",
)
# Between that swap's two renames the live database's name is gone for a
# moment: waited for this long at most, so that a misspelt name still fails
# within seconds.
RENAMED_AWAY_MARKERS = ('database "', '" does not exist')
RENAMED_AWAY_SECONDS = 2.0
POLL_SECONDS = 0.5


def _session(settings: Settings) -> dict[str, Any]:
    """The ConnectParams fields of the session's own settings."""
    db = settings["database"]
    try:
        options = environment.session_options(
            db["search_path"], db["statement_lock_timeout"], db["statement_timeout"])
    except ValueError as exc:
        raise ConfigError(f"{settings.path}: [database] {exc}") from None
    return {"options": options, "tell_interval": db["tell_interval"],
            "lock_wait": db["statement_lock_timeout"]}


@dataclass(frozen=True)
class ConnectParams:
    """Where and as whom to connect; repr() never shows the password."""

    dbname: str
    host: str | None
    port: int
    user: str | None
    password: str | None = field(default=None, repr=False)
    os_user: str | None = None  # switch the effective uid to this user to connect
    options: str = ""  # the session's settings (environment.session_options)
    tell_interval: float = 5.0  # seconds between lines that tell a blocked statement
    lock_wait: float = 0.0  # the session's lock_timeout in seconds (0: none)

    def describe(self) -> str:
        who = self.user or self.os_user or "(default user)"
        where = f"{self.host or 'local socket'}:{self.port}"
        via = f" (as system user {self.os_user})" if self.os_user else ""
        return f"database {self.dbname} as {who} at {where}{via}"

    def keywords(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"dbname": self.dbname, "port": self.port}
        for name, value in (("host", self.host), ("user", self.user), ("password", self.password)):
            if value:
                kw[name] = value
        kw.update(environment.libpq_keywords(self.options))
        return kw

    def gives_up(self) -> str:
        if not self.lock_wait:
            return "no time limit ([database] statement_lock_timeout = 0)"
        return f"gives up after {self.lock_wait:g}s ([database] statement_lock_timeout)"

    def scrub(self, text: str) -> str:
        return text.replace(self.password, "********") if self.password else text


def params_from_settings(settings: Settings, connect_as: str | None = None) -> ConnectParams:
    """ConnectParams for settings' [database] connect_as (or CONNECT_AS)."""
    db = settings["database"]
    if (connect_as or db["connect_as"]) == "postgres":
        # IVLE's upgrade procedure, 'sudo -u postgres psql -d ivle': ivle.conf only names the
        # database and port, and may be absent on a bare master.
        name, port = "ivle", 5432
        conf_path = settings.ivle_conf_dir / "ivle.conf"
        if conf_path.exists():
            ivle_db = settings.ivle_conf().database
            name, port = ivle_db["name"], int(ivle_db["port"])
        return ConnectParams(name, db["socket_dir"], port, "postgres", None, "postgres",
                             **_session(settings))
    ivle_db = settings.ivle_conf().database
    if not ivle_db.get("username"):
        raise ConfigError(
            f"{settings.ivle_conf_dir / 'ivle.conf'}: [database] username is not set "
            "(or set [database] connect_as = postgres in ivle-maint's settings)"
        )
    return ConnectParams(
        ivle_db["name"],
        ivle_db["host"],
        int(ivle_db["port"]),
        ivle_db["username"],
        ivle_db["password"],
        **_session(settings),
    )


@contextmanager
def effective_user(name: str | None) -> Iterator[None]:
    """Run the block with name's effective uid and gid (root only)."""
    if name is None:
        yield
        return
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise MaintError(f"no system user {name!r} to connect as") from None
    if os.geteuid() == entry.pw_uid:
        yield
        return
    if os.geteuid() != 0:
        raise MaintError(f"connecting as system user {name} needs root")
    old_uid, old_gid = os.geteuid(), os.getegid()
    os.setegid(entry.pw_gid)
    os.seteuid(entry.pw_uid)
    try:
        yield
    finally:
        os.seteuid(old_uid)
        os.setegid(old_gid)


def reason(exc: BaseException, params: ConnectParams | None = None) -> str:
    """One line out of libpq's multi-line message, password scrubbed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln.split("FATAL:", 1)[1] for ln in lines if "FATAL:" in ln), None)
    if text is None and lines:
        text = lines[0].split(" failed: ", 1)[-1]
    text = " ".join((text or type(exc).__name__).split())
    return params.scrub(text) if params else text


def pg_reason(exc: Exception) -> str:
    """The server's one-line message for a failed statement."""
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    return " ".join(text.split())


def _not_ready(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _NOT_READY)


def renamed_away(text: str) -> bool:
    """Does TEXT say the database (not a role, nor anything else) does not exist?"""
    start, end = RENAMED_AWAY_MARKERS
    lowered = text.strip().lower()
    return lowered.startswith(start) and lowered.endswith(end) and len(lowered) > len(start + end)


def worth_waiting(text: str, waited: float) -> bool:
    """Is a connection that failed with TEXT, WAITED seconds into the wait,
    one to try again (the server or the database back in a moment)?"""
    return _not_ready(text) or (renamed_away(text) and waited < RENAMED_AWAY_SECONDS)


def application_name() -> str:
    """Shown in pg_stat_activity, so a waiting runner can name the holder and
    judge whether it is alive (liveness.py: the token first, the 63 bytes
    PostgreSQL keeps cut the hostname, never the token)."""
    return f"ivle-maint {liveness.token() or 'pid ' + str(os.getpid())} on " \
        f"{socket.gethostname()}"[:63]


def connect(
    params: ConnectParams,
    *,
    wait_timeout: float,
    reporter: Reporter,
    resume: str | None = None,
) -> Any:
    """A psycopg2 connection; waits up to wait_timeout for a starting server.

    Its statements' lock waits are told to reporter (gates/waits.py).
    """
    waits.interruptible()
    started = time.monotonic()
    deadline = started + wait_timeout
    waited = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            conn = _open(params, max(2, min(10, int(remaining) + 1)))
        except psycopg2.OperationalError as exc:
            why = reason(exc, params)
            if not worth_waiting(why, time.monotonic() - started):
                raise MaintError(f"cannot connect to {params.describe()}: {why}") from None
            if time.monotonic() >= deadline:
                raise MaintError(
                    f"PostgreSQL did not accept connections to {params.describe()} within "
                    f"{wait_timeout:g}s ([database] wait_timeout): {why}",
                    resume=resume,
                ) from None
            if not waited:
                reporter.info(
                    f"PostgreSQL is not accepting connections yet ({why}); "
                    f"waiting up to {wait_timeout:g}s"
                )
                waited = True
            log.debug("not ready: %s", why)
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            continue
        if waited:
            reporter.info("PostgreSQL is accepting connections")
        waits.watch(conn, waits.Watch(
            tell=reporter.info, open_side=lambda: _open(params, waits.SIDE_CONNECT),
            interval=params.tell_interval, gives_up=params.gives_up()))
        return conn


def _open(params: ConnectParams, timeout: float) -> Any:
    """One connection attempt, bounded by timeout, as the right system user."""
    with waits.connecting(timeout), effective_user(params.os_user):
        return psycopg2.connect(**params.keywords(), connect_timeout=int(timeout),
                                application_name=application_name())

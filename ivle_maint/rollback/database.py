"""A full rollback of IVLE's database: restore the dump into a new database,
show what the swap would lose, swap it in by name, keep the failed one.

Nothing is restored over the live database: ``pg_restore --clean`` cannot
drop a table a function depends on (IVLE's schema has such functions), and
a restore that fails half-way would leave the site with half a database.
Instead:

1. restore_copy: CREATE DATABASE NAME (the live database's encoding
   and locale, from template0, owned by ivle.conf's login) and pg_restore
   the dump into it, in parallel and stopping at the first error, as that
   login, every object its (db/client.restore_argv: never as a superuser,
   which would run the database's users' functions with its rights).
   A failure or an interruption drops NAME again: nothing half-restored
   is left; a SIGKILL drops nothing, so a finished copy is marked (COMMENT
   ON DATABASE) and whole_copy, the one gate before a copy is used, drops
   and restores again a copy without the mark.
2. differences (rollback/differences.py): per table, the rows written
   since the dump (lost by the swap) and those the swap brings back.
3. swap: live -> keep_as, restored -> live, two renames.  An idempotent
   state machine: which of the three names exist says how far a run got,
   so a rerun after a kill between the renames finishes the swap;
   resume_swap, first in a rerun's step, also opens again a live database
   a killed run closed to sessions (before or after its renames).
4. kept_databases, drop_expired: the failed database is kept as
   ``<live>_failed_<UTC YYYYmmddHHMMSS>`` and dropped once older than a
   number of days; a database whose name does not match exactly is never
   dropped.

Privileges.  CREATE DATABASE needs CREATEDB (or superuser); renaming needs
the database's ownership and CREATEDB; ending other sessions needs
superuser (or pg_signal_backend) for sessions of other roles.  IVLE's own
database user has none of them as IVLE installs it, so a rollback runs
with [database] connect_as = postgres (Debian's postgres system user by
peer authentication, as IVLE's upgrade procedure's ``sudo -u postgres``);
restore_copy says so in one line before it creates anything.  The
database-level settings of the live database (ALTER DATABASE ... SET,
GRANT ... ON DATABASE) are not in a dump taken without --create and are
not copied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from .. import children
from ..db import client
from ..db.connect import ConnectParams, pg_reason
from ..errors import MaintError
from ..gates import clock, environment, trusted, waits
from ..gates.text import shown
from ..output import Reporter
from ..pgdriver import psycopg2, sql
from .differences import TableDifference, differences, summary
from .sessions import exists, maintenance

__all__ = ["KeptDatabase", "SwapState", "TableDifference", "differences", "drop_expired",
           "is_whole", "kept_databases", "kept_name", "restore_copy", "resume_swap", "summary",
           "swap", "whole_copy"]

log = logging.getLogger(__name__)

NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL cuts longer names, silently
KEPT_INFIX = "_failed_"
KEPT_STAMP = "%Y%m%d%H%M%S"
RENAME_TRIES = 3  # a session that connected between the block and the rename


# -- restore_copy -------------------------------------------------------------


def check_name(name: str) -> str:
    """NAME, if PostgreSQL keeps it whole; else a MaintError."""
    if not name or "\x00" in name or len(name.encode("utf-8")) > NAME_BYTES:
        raise MaintError(f"database name {shown(name, 80)!r}: 1 to {NAME_BYTES} bytes, no NUL")
    return name


def _require_createdb(cur: Any) -> None:
    cur.execute("SELECT current_user, rolsuper OR rolcreatedb FROM pg_roles "
                "WHERE rolname = current_user")
    user, may = cur.fetchone()
    if not may:
        raise MaintError(
            f"creating a database needs the CREATEDB privilege, which role {shown(user, 63)} "
            f"lacks: set [database] connect_as = postgres (the postgres system user, as IVLE's "
            f"upgrade procedure connects) for the rollback")


def _create_statement(cur: Any, live: str, name: str, owner: str | None) -> sql.Composable:
    """CREATE DATABASE NAME as the live database is (encoding, locale), owned
    by OWNER (who restores into it), else by the live database's owner."""
    # to_jsonb: the locale columns differ between versions (PG 15 daticulocale,
    # PG 17 datlocale and the builtin provider).
    cur.execute("SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), to_jsonb(d) "
                "FROM pg_database d WHERE d.datname = %s", [live])
    row = cur.fetchone()
    if row is None:
        raise MaintError(f"no database {shown(live, 63)} to restore a copy of")
    live_owner, encoding, props = row
    owner = owner or live_owner
    parts = [sql.SQL("CREATE DATABASE {} WITH OWNER {} TEMPLATE template0 ENCODING {} "
                     "LC_COLLATE {} LC_CTYPE {}").format(
        sql.Identifier(name), sql.Identifier(owner), sql.Literal(encoding),
        sql.Literal(props["datcollate"]), sql.Literal(props["datctype"]))]
    provider = props.get("datlocprovider", "c")
    locale = props.get("datlocale") or props.get("daticulocale")
    if provider == "i":
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale)))
        if props.get("daticurules"):
            parts.append(sql.SQL("ICU_RULES {}").format(sql.Literal(props["daticurules"])))
    elif provider == "b":
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(
            sql.Literal(locale)))
    return sql.SQL(" ").join(parts)


@contextmanager
def _readable_copy(dump: Path, who: client.Identity) -> Iterator[Path]:
    """A private copy of DUMP that pg_restore, running as WHO, can open by name.

    pg_restore's parallel workers each open the archive by its name, and
    the dump is root's, mode 0600, in a root-only directory.  The copy is
    made from the descriptor the gate checked (trusted.DUMP: root's, a
    regular file, no link played), in a directory only WHO can enter.
    """
    try:
        source = trusted.open_checked(dump, trusted.DUMP)
    except FileNotFoundError:
        raise MaintError(f"{dump}: no such dump") from None
    try:
        directory = Path(tempfile.mkdtemp(prefix="ivle-maint-restore-"))
        try:
            if who.user is not None:
                os.chown(directory, who.user, who.group if who.group is not None else -1)
            copy = directory / "restore.dump"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            target = os.open(copy, flags, 0o600)
            try:
                if who.user is not None:
                    os.fchown(target, who.user, who.group if who.group is not None else -1)
                size = os.fstat(source).st_size
                offset = 0
                while offset < size:  # in the kernel, no copy through Python
                    sent = os.sendfile(target, source, offset, size - offset)
                    if sent == 0:
                        break
                    offset += sent
            finally:
                os.close(target)
            yield copy
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        os.close(source)


def _pg_restore(fill_as: ConnectParams, name: str, archive: Path, jobs: int) -> None:
    argv = [*client.restore_argv(client.program("pg_restore", ""), fill_as, name),
            f"--jobs={jobs}", "--no-password", str(archive)]
    kwargs = client.run_kwargs(fill_as)
    with children.spawning():  # one thread forks at a time (children.py)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, **kwargs)
    note = children.record(proc.pid, argv, kwargs["env"][environment.MARK])
    finished = False
    try:
        _out, err = proc.communicate()
        finished = True
    finally:
        if not finished:  # interrupted: its workers too, before the database goes
            children.end_now(proc.pid)
            proc.wait()
        children.forget(note)
    if proc.returncode != 0:
        raise MaintError(client.failure(err, proc.returncode, fill_as))


class NotCreated(MaintError):
    """CREATE DATABASE refused: nothing of ours to drop (the name may be another's)."""


def _create(params: ConnectParams, create: sql.Composable, name: str,
            reporter: Reporter | None) -> None:
    with maintenance(params, reporter) as cur:
        try:
            cur.execute(create)
        except psycopg2.Error as exc:
            raise NotCreated(f"cannot create database {shown(name, 63)}: "
                             f"{pg_reason(exc)}") from None


def _drop(params: ConnectParams, name: str, reporter: Reporter | None) -> str | None:
    """Drop NAME (WITH FORCE: a killed pg_restore's sessions); why not, or None."""
    try:
        with waits.deferred(), maintenance(params, reporter) as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
    except (psycopg2.Error, MaintError) as exc:
        return pg_reason(exc) if isinstance(exc, psycopg2.Error) else str(exc)
    return None


WHOLE = "ivle-maint: restored whole from "  # the comment a finished restore_copy sets


def _say_whole(params: ConnectParams, name: str, dump: Path,
               reporter: Reporter | None) -> None:
    """Mark NAME restored to its end: a database of that name without the
    mark is what a kill left half-restored (never swapped in)."""
    with maintenance(params, reporter) as cur:
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(name), sql.Literal(WHOLE + dump.name)))


def is_whole(params: ConnectParams, name: str, reporter: Reporter | None = None
             ) -> bool | None:
    """Did restore_copy finish NAME (None: there is no database NAME)?"""
    with maintenance(params, reporter) as cur:
        cur.execute("SELECT coalesce(shobj_description(oid, 'pg_database'), '') "
                    "FROM pg_database WHERE datname = %s", [name])
        row = cur.fetchone()
    return None if row is None else str(row[0]).startswith(WHOLE)


def whole_copy(params: ConnectParams, dump: Path, name: str, *, fill_as: ConnectParams,
               reporter: Reporter) -> str:
    """The one gate before a restored copy is used: NAME restored whole from
    DUMP, made now unless a finished one is there; a copy a kill left
    half-restored (no mark) is dropped and made again.  What was done, one line."""
    whole = is_whole(params, name, reporter)
    if whole:
        return f"database {name}, restored from {dump.name} before, is used"
    if whole is False:
        left = _drop(params, name, reporter)
        if left is not None:
            raise MaintError(f"database {shown(name, 63)} was left half-restored by an "
                             f"interrupted run and cannot be dropped ({left}): drop it by hand "
                             "and run the rollback again")
        reporter.info(f"database {name} was left half-restored by an interrupted run: "
                      "dropped, restoring it again")
    reporter.info(f"restoring {dump.name} into a new database {name} (pg_restore)")
    restore_copy(params, dump, name, fill_as=fill_as, reporter=reporter)
    return f"database {name} restored from {dump.name}"


def restore_copy(params: ConnectParams, dump: Path, name: str, *, fill_as: ConnectParams,
                 jobs: int | None = None, reporter: Reporter | None = None) -> None:
    """Create database NAME like PARAMS' database, owned by FILL_AS's user
    (ivle.conf's login), and restore DUMP into it as that user: nothing of
    the dump runs as PARAMS' superuser (db/client.restore_argv).

    jobs: pg_restore's parallel jobs (default: one per CPU).  On failure or
    interruption NAME is dropped again and the error is one line.
    """
    check_name(name)
    jobs = jobs or os.cpu_count() or 1
    with maintenance(params, reporter) as cur:
        _require_createdb(cur)
        if exists(cur, name):
            raise MaintError(f"database {shown(name, 63)} already exists: drop it, or restore "
                             "into another name")
        create = _create_statement(cur, params.dbname, name, fill_as.user)
    # The dump is checked and copied before anything is created.
    with _readable_copy(dump, client.identity(fill_as)) as archive:
        try:
            _create(params, create, name, reporter)
            _pg_restore(fill_as, name, archive, jobs)
            _say_whole(params, name, dump, reporter)
        except NotCreated:
            raise
        except BaseException as exc:  # a failure, or Ctrl-C even inside CREATE DATABASE
            left = _drop(params, name, reporter)
            outcome = (f"database {name} dropped" if left is None
                       else f"database {name} NOT dropped ({left}): drop it by hand")
            if isinstance(exc, Exception):
                why = str(exc) if isinstance(exc, MaintError) else f"{type(exc).__name__}: {exc}"
                raise MaintError(shown(f"pg_restore of {dump} into new database {name} failed: "
                                       f"{why}; {outcome}")) from None
            log.warning("restore of %s interrupted; %s", dump, outcome)
            raise


# -- swap ---------------------------------------------------------------------


class SwapState(Enum):
    """How far a swap got, from which of live, restored and keep_as exist."""

    START = "live and restored present: rename live to keep_as"
    HALFWAY = "live renamed to keep_as: rename restored to live"
    DONE = "both renamed: let sessions in again"


def swap_state(cur: Any, live: str, restored: str, keep_as: str) -> SwapState:
    present = (exists(cur, live), exists(cur, restored), exists(cur, keep_as))
    states = {(True, True, False): SwapState.START, (False, True, True): SwapState.HALFWAY,
              (True, False, True): SwapState.DONE}
    if present in states:
        return states[present]
    named = ", ".join(f"{shown(n, 63)} {'exists' if p else 'missing'}"
                      for n, p in zip((live, restored, keep_as), present, strict=True))
    raise MaintError(f"cannot swap the databases: {named}")


def resume_swap(params: ConnectParams, live: str, restored: str, keep_as: str, *,
                reporter: Reporter) -> SwapState | None:
    """After a run was killed in its database step, before anything connects
    to LIVE: a swap half done (HALFWAY) or done but still closed to sessions
    (DONE) is finished; one that closed LIVE and RESTORED but renamed
    nothing (START) opens them again (the step swaps them anew).  The state
    found; None when the names match no swap (it never began)."""
    with maintenance(params, reporter) as cur:
        try:
            state = swap_state(cur, live, restored, keep_as)
        except MaintError:
            return None
        if state is SwapState.START:
            closed = [n for n in (live, restored) if not _allowed(cur, n)]
            _open_to_sessions(cur, closed)
            if closed:
                reporter.info(f"the database swap was interrupted before its first rename: "
                              f"{', '.join(closed)} open to sessions again")
            return state
    swap(params, live, restored, keep_as, reporter=reporter)
    where = ("between its renames" if state is SwapState.HALFWAY
             else "after its renames")
    reporter.info(f"the database swap was interrupted {where}: finished ({live} is the "
                  f"restored database, open to sessions; the replaced one kept as {keep_as})")
    return SwapState.DONE


def _allowed(cur: Any, name: str) -> bool:
    cur.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", [name])
    row = cur.fetchone()
    return bool(row and row[0])


def _close_to_sessions(cur: Any, names: list[str]) -> None:
    """No new session in NAMES, and every other session there ended."""
    for name in names:
        cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
            sql.Identifier(name)))
    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()", [names])


def _rename(cur: Any, old: str, new: str) -> None:
    for attempt in range(RENAME_TRIES):
        try:
            # The server waits up to 5 s for terminated sessions to go.
            cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg2.errors.ObjectInUse:
            if attempt == RENAME_TRIES - 1:
                raise
            _close_to_sessions(cur, [old])


# Called after each rename with (old, new): the tests' fault injection point.
after_rename: Callable[[str, str], None] = lambda old, new: None  # noqa: E731


def swap(params: ConnectParams, live: str, restored: str, keep_as: str,
         *, reporter: Reporter | None = None) -> None:
    """Rename LIVE to KEEP_AS and RESTORED to LIVE, ending their sessions.

    Idempotent: run again after an interruption anywhere (even between the
    two renames), it finishes what is left.  Runs from the maintenance
    database, never inside LIVE or RESTORED.
    """
    for name in (live, restored, keep_as):
        check_name(name)
    if len({live, restored, keep_as}) != 3:
        raise MaintError("swap: live, restored and keep_as must be three names")
    try:
        with maintenance(params, reporter) as cur:
            for _ in SwapState:  # each pass moves one state on
                state = swap_state(cur, live, restored, keep_as)
                log.info("database swap: %s", state.value)
                if state is SwapState.DONE:
                    _open_to_sessions(cur, [live, keep_as])
                    return
                try:
                    _step(cur, state, live, restored, keep_as)
                except psycopg2.Error:
                    if state is SwapState.START:  # nothing renamed: the site gets live back
                        with contextlib.suppress(psycopg2.Error):
                            _open_to_sessions(cur, [live])
                    raise
    except psycopg2.Error as exc:
        raise MaintError(f"swapping database {shown(restored, 63)} in as {shown(live, 63)} "
                         f"failed: {pg_reason(exc)} (run it again to finish)") from None
    raise MaintError("database swap made no progress")  # each step renames: never here


def _step(cur: Any, state: SwapState, live: str, restored: str, keep_as: str) -> None:
    if state is SwapState.START:
        _close_to_sessions(cur, [live, restored])
        _rename(cur, live, keep_as)
        after_rename(live, keep_as)
    else:
        _close_to_sessions(cur, [restored])
        _rename(cur, restored, live)
        after_rename(restored, live)


def _open_to_sessions(cur: Any, names: list[str]) -> None:
    for name in names:
        cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
            sql.Identifier(name)))


# -- failed databases kept ----------------------------------------------------


@dataclass(frozen=True)
class KeptDatabase:
    name: str
    failed_at: datetime  # UTC, from the name


def kept_name(live: str, when: datetime | None = None) -> str:
    """The name LIVE is kept under when a rollback swaps it out (now, or WHEN)."""
    stamp = (when or datetime.fromtimestamp(clock.wall(), UTC)).strftime(KEPT_STAMP)
    return check_name(f"{live}{KEPT_INFIX}{stamp}")


def parse_kept(live: str, name: str) -> datetime | None:
    """When NAME's database was swapped out of LIVE; None unless NAME is
    exactly kept_name(LIVE, some time) (a real date, written back the same)."""
    match = re.fullmatch(rf"{re.escape(live)}{KEPT_INFIX}([0-9]{{14}})", name)
    if match is None:
        return None
    try:
        when = datetime.strptime(match.group(1), KEPT_STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None
    return when if when.strftime(KEPT_STAMP) == match.group(1) else None


def kept_databases(params: ConnectParams, prefix: str,
                   reporter: Reporter | None = None) -> list[KeptDatabase]:
    """The databases kept from rollbacks of PREFIX (the live name), oldest first."""
    with maintenance(params, reporter) as cur:
        cur.execute("SELECT datname FROM pg_database")
        names = [row[0] for row in cur.fetchall()]
    kept = []
    for name in names:
        when = parse_kept(prefix, name)
        if when is not None:
            kept.append(KeptDatabase(name, when))
    return sorted(kept, key=lambda k: (k.failed_at, k.name))


def drop_expired(params: ConnectParams, prefix: str, days: float, *,
                 now: datetime | None = None, reporter: Reporter | None = None) -> list[str]:
    """Drop the kept databases of PREFIX older than DAYS; the names dropped.

    A kept database someone is connected to is left (a warning) for the
    next time: it is being looked at.
    """
    if days < 0:
        raise MaintError(f"days kept must be 0 or more, not {days:g}")
    now = now or datetime.fromtimestamp(clock.wall(), UTC)
    dropped = []
    expired = [k for k in kept_databases(params, prefix, reporter)
               if now - k.failed_at > timedelta(days=days)]
    with maintenance(params, reporter) as cur:
        for kept in expired:
            # Checked again just before the drop: never a name that does not match.
            if parse_kept(prefix, kept.name) is None or kept.name in (prefix, params.dbname):
                continue
            try:
                cur.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(kept.name)))
            except psycopg2.Error as exc:
                log.warning("kept database %s not dropped: %s", shown(kept.name, 63),
                            pg_reason(exc))
                continue
            dropped.append(kept.name)
    return dropped

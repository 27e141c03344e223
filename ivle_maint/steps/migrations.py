"""The seed's "Patching the database" step: apply new migrations on the master.

Library functions the procedure, the packaging hooks and the CLI call:

    status(settings)                    -> Status       what is applied, pending, changed
    preflight(settings, ...)            -> Plan         read + classify; raise on any problem
    migrate(settings, reporter, ...)    -> MigrateResult  lock, back up, apply
    baseline(settings, through, ...)    -> BaselineResult record as applied, run nothing
    backup_now(settings, reporter)      -> Path         a pg_dump now

Each pending migration runs in one transaction together with its marker
row (table ivle_maint_migrations, see db.marker), so a failure leaves
neither.  Nothing here prints: messages go to the reporter, results come
back as dataclasses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..db import backup as backups
from ..db import lock, marker
from ..db.classify import NO_TRANSACTION, Classified, classify
from ..db.connect import ConnectParams, connect, params_from_settings
from ..db.discovery import Migration, check_writers, checksum, discover, find, from_files, parse_key
from ..db.marker import MarkerRow
from ..errors import MaintError
from ..output import RecordingReporter, Reporter

log = logging.getLogger(__name__)

RESUME = "ivle-maint db migrate"


@dataclass(frozen=True)
class Changed:
    """An applied migration whose file no longer matches its checksum."""

    key: str
    path: Path
    recorded: str
    current: str


@dataclass(frozen=True)
class Status:
    """The database's marker compared with the shipped migrations."""

    dbname: str
    directory: Path
    marker: bool  # the marker table exists
    applied: dict[str, MarkerRow]
    shipped: list[Migration]
    pending: list[Migration]  # shipped, never applied, in order (out-of-order ones included)
    out_of_order: list[Migration]  # pending but older than the newest applied
    changed: list[Changed]
    missing: list[str]  # applied keys no longer shipped (informational)
    tables: list[str]  # a few tables other than the marker: populated?

    @property
    def newest_applied(self) -> str | None:
        keys = [k for k in self.applied if _order(k) is not None]
        return max(keys, key=lambda k: _order(k) or (0, 0)) if keys else None

    @property
    def unmarked(self) -> bool:
        """A populated database with no record of what was applied."""
        return not self.applied and bool(self.tables)


@dataclass
class Plan:
    """What migrate would do: classified pending files, and what blocks it."""

    status: Status
    pending: list[Classified]
    accept: list[Changed]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_problems(self, resume: str | None = None) -> None:
        if self.problems:
            more = len(self.problems) - 1
            extra = f" (and {more} more: see 'ivle-maint db migrate --dry-run')" if more else ""
            raise MaintError(self.problems[0] + extra, resume=resume)


@dataclass(frozen=True)
class Applied:
    key: str
    mode: str
    seconds: float


@dataclass
class MigrateResult:
    applied: list[Applied] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    backup: Path | None = None
    up_to_date: bool = False


@dataclass
class BaselineResult:
    recorded: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    skipped: bool = False  # when_unmarked and the marker already had rows


def _order(key: str) -> tuple[int, int] | None:
    try:
        return parse_key(key)[0]
    except ValueError:
        return None


def _canonical(key: str) -> str | None:
    try:
        return parse_key(Path(key).name)[1]
    except ValueError:
        return None


def _directory(settings: Settings, migrations_dir: Path | str | None) -> Path:
    return Path(migrations_dir) if migrations_dir else settings.path_of("migrations")


@dataclass
class _Session:
    params: ConnectParams
    conn: Any


@contextmanager
def _session(
    settings: Settings, reporter: Reporter, resume: str | None, *, locked: bool = False
) -> Iterator[_Session]:
    """A connection (waiting for the server), optionally holding the lock."""
    params = params_from_settings(settings)
    db = settings["database"]
    conn = connect(params, wait_timeout=db["wait_timeout"], reporter=reporter, resume=resume)
    try:
        if locked:
            lock.acquire(conn, timeout=db["lock_timeout"], reporter=reporter, resume=resume)
        yield _Session(params, conn)
    finally:
        conn.close()  # also releases the session lock


def _status(conn: Any, dbname: str, directory: Path, shipped: list[Migration]) -> Status:
    applied = marker.applied(conn)
    has_marker = bool(applied) or marker.exists(conn)
    conn.rollback()
    tables = marker.user_tables(conn) if not applied else []
    conn.rollback()
    by_key = {m.key: m for m in shipped}
    pending = [m for m in shipped if m.key not in applied]
    newest = max((o for k in applied if (o := _order(k)) is not None), default=None)
    out_of_order = [m for m in pending if newest is not None and m.order < newest]
    changed = []
    for key, row in applied.items():
        if key in by_key and (current := checksum(by_key[key])) != row.checksum:
            changed.append(Changed(key, by_key[key].path, row.checksum, current))
    missing = [k for k in applied if k not in by_key]
    return Status(
        dbname,
        directory,
        has_marker,
        applied,
        shipped,
        pending,
        out_of_order,
        changed,
        missing,
        tables,
    )


def status(
    settings: Settings,
    *,
    migrations_dir: Path | str | None = None,
    reporter: Reporter | None = None,
) -> Status:
    """Applied, pending, changed and out-of-order migrations; changes nothing."""
    directory = _directory(settings, migrations_dir)
    shipped = discover(directory)
    with _session(settings, reporter or RecordingReporter(), None) as s:
        return _status(s.conn, s.params.dbname, directory, shipped)


def _plan(
    conn: Any,
    st: Status,
    accept_changed: Iterable[str],
    allow_out_of_order: bool,
) -> Plan:
    """Classify every pending file and list everything that blocks migrate."""
    problems: list[str] = []
    if st.unmarked:
        problems.append(
            f"database {st.dbname} has tables ({', '.join(st.tables)}) but no record of the "
            f"migrations applied to it (table {marker.TABLE}): record them, without running "
            "them, with 'ivle-maint db baseline THROUGH', THROUGH being the newest migration "
            "its IVLE version shipped"
        )
    changed = {c.key: c for c in st.changed}
    accept: list[Changed] = []
    for key in accept_changed:
        wanted = _canonical(key)
        if wanted is None or wanted not in changed:
            problems.append(f"--accept-changed {key}: not an applied migration whose file changed")
        else:
            accept.append(changed[wanted])
    accepted = {c.key for c in accept}
    for c in st.changed:
        if c.key not in accepted:
            problems.append(
                f"migration {c.key} was applied but {c.path} has changed since (sha256 "
                f"{c.recorded[:12]} then, {c.current[:12]} now): check the change, then "
                f"accept it with --accept-changed {c.key}"
            )
    if st.out_of_order and not allow_out_of_order:
        keys = ", ".join(m.key for m in st.out_of_order)
        problems.append(
            f"migration(s) {keys} are older than the newest applied ({st.newest_applied}) but "
            "were never applied: apply them anyway with --allow-out-of-order"
        )
    pending: list[Classified] = []
    version = conn.server_version
    standard = conn.info.parameter_status("standard_conforming_strings") != "off"
    for m in st.pending:
        try:
            pending.append(classify(m, server_version=version, standard_strings=standard))
        except MaintError as exc:
            problems.append(str(exc))
    return Plan(st, pending, accept, problems)


def preflight(
    settings: Settings,
    *,
    migrations_dir: Path | str | None = None,
    accept_changed: Sequence[str] = (),
    allow_out_of_order: bool = False,
    reporter: Reporter | None = None,
    check: bool = True,
    resume: str | None = RESUME,
) -> Plan:
    """Read, split and classify every pending file before anything changes.

    With check (the default) any problem (a broken or unsupported file, a
    changed or out-of-order migration, no marker) raises MaintError.
    """
    directory = _directory(settings, migrations_dir)
    shipped = discover(directory)
    with _session(settings, reporter or RecordingReporter(), resume) as s:
        st = _status(s.conn, s.params.dbname, directory, shipped)
        check_writers(directory, [m.path for m in st.pending])
        plan = _plan(s.conn, st, accept_changed, allow_out_of_order)
    if check:
        plan.raise_problems(resume)
    return plan


def _pg_reason(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    return " ".join(text.split())


class _Failed(MaintError):
    """A migration that failed; migrate() adds the backup and resume advice."""


def _abandon(conn: Any) -> None:
    """Roll back whatever is open, including a file's own BEGIN in autocommit."""
    if conn.closed:
        return
    if conn.autocommit and conn.info.transaction_status != 0:  # 0: TRANSACTION_STATUS_IDLE
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    conn.rollback()
    if conn.autocommit:
        conn.autocommit = False


def _run_statements(conn: Any, c: Classified) -> None:
    """Execute c's statements; a failure names the file and line."""
    import psycopg2

    with conn.cursor() as cur:
        for statement in c.statements:
            try:
                cur.execute(statement.text)
            except psycopg2.Error as exc:
                if c.mode == NO_TRANSACTION:
                    effect = (
                        f"{c.key} runs without a transaction ({NO_TRANSACTION}): what ran "
                        "before that line stays applied; finish or undo it by hand"
                    )
                else:
                    effect = f"nothing of {c.key} was applied"
                raise _Failed(
                    f"migration {c.key} failed at {c.migration.path}:{statement.line}: "
                    f"{_pg_reason(exc)}; {effect}"
                ) from None
    for notice in conn.notices:
        log.info("%s: %s", c.key, notice.strip())
    del conn.notices[:]
    if conn.autocommit and conn.info.transaction_status != 0:
        raise _Failed(
            f"migration {c.key} left a transaction open (BEGIN without COMMIT); it was rolled back"
        )


def _apply(s: _Session, c: Classified, *, host: str, package_version: str | None) -> Applied:
    """Run one migration and write its marker row; raise _Failed on failure.

    Transactional modes: statements and marker row in one transaction.
    no-transaction: statements in autocommit, as psql runs them, then the
    marker row in a transaction of its own.
    """
    import psycopg2

    conn = s.conn
    conn.rollback()
    conn.autocommit = c.mode == NO_TRANSACTION
    started = time.monotonic()
    try:
        _run_statements(conn, c)
        if conn.autocommit:
            conn.autocommit = False  # the marker row gets a transaction of its own
        seconds = time.monotonic() - started
        with conn.cursor() as cur:
            marker.record(
                cur,
                key=c.key,
                filename=c.migration.name,
                checksum=c.checksum,
                mode=c.mode,
                duration=seconds,
                host=host,
                package_version=package_version,
            )
        conn.commit()
    except psycopg2.Error as exc:
        _abandon(conn)
        raise _Failed(f"migration {c.key}: recording it failed: {_pg_reason(exc)}") from None
    except BaseException:
        _abandon(conn)
        raise
    return Applied(c.key, c.mode, seconds)


def migrate(
    settings: Settings,
    reporter: Reporter,
    *,
    migrations_dir: Path | str | None = None,
    accept_changed: Sequence[str] = (),
    allow_out_of_order: bool = False,
    backup: bool | None = None,
    package_version: str | None = None,
    resume: str | None = RESUME,
) -> MigrateResult:
    """Apply every pending migration in order, each with its marker row.

    Under the advisory lock it re-reads the marker, so a runner that waited
    for another one does not apply anything twice.  backup=None follows
    [database] backup; no dump is taken when nothing is pending.
    """
    directory = _directory(settings, migrations_dir)
    shipped = discover(directory)
    db = settings["database"]
    result = MigrateResult()
    with _session(settings, reporter, resume, locked=True) as s:
        st = _status(s.conn, s.params.dbname, directory, shipped)
        check_writers(directory, [m.path for m in st.pending])
        plan = _plan(s.conn, st, accept_changed, allow_out_of_order)
        plan.raise_problems(resume)
        if not plan.pending and not plan.accept:
            reporter.info(
                f"database {s.params.dbname} is up to date ({len(st.applied)} migrations applied)"
            )
            result.up_to_date = True
            return result
        if plan.pending and (db["backup"] if backup is None else backup):
            label = f"before-{plan.pending[0].key}"
            reporter.info(f"backing up database {s.params.dbname} (pg_dump)")
            result.backup = backups.dump(
                s.params, settings.path_of("backup"), label=label, keep=db["backup_keep"]
            )
            reporter.info(f"backup: {result.backup}")
        marker.ensure(s.conn)
        _accept(s.conn, plan.accept, reporter)
        result.accepted = [c.key for c in plan.accept]
        total = len(plan.pending)
        for done, c in enumerate(plan.pending):
            reporter.progress("migrations", done, total)
            try:
                applied = _apply(s, c, host=settings.node_name, package_version=package_version)
            except _Failed as exc:
                raise MaintError(_failure(str(exc), s.params, result), resume=resume) from None
            result.applied.append(applied)
            reporter.info(f"applied {c.key} ({c.mode}) in {applied.seconds:.1f}s")
        reporter.progress("migrations", total, total)
    return result


def _failure(message: str, params: ConnectParams, result: MigrateResult) -> str:
    if result.applied:
        message += f"; {len(result.applied)} earlier migration(s) of this run stay applied"
    if result.backup:
        restore = backups.restore_command(params, result.backup)
        message += f"; backup taken before this run: {result.backup} (restore: {restore})"
    return message


def _accept(conn: Any, accept: list[Changed], reporter: Reporter) -> None:
    """Record the new checksums of changed files the admin accepted, at once."""
    if not accept:
        return
    with conn, conn.cursor() as cur:
        for c in accept:
            note = f"changed file accepted (sha256 was {c.recorded})"
            marker.accept_checksum(cur, c.key, c.recorded, c.current, note)
    for c in accept:
        reporter.info(f"accepted the changed file of {c.key}")


def baseline(
    settings: Settings,
    through: str | Sequence[Path | str],
    reporter: Reporter | None = None,
    *,
    migrations_dir: Path | str | None = None,
    package_version: str | None = None,
    force: bool = False,
    when_unmarked: bool = False,
    resume: str | None = None,
) -> BaselineResult:
    """Record migrations as applied without running them.

    through is a key (every shipped migration up to it) or a list of files
    (e.g. the migrations the version being upgraded shipped).  If the
    marker already records migrations, adding more is refused unless
    force; with when_unmarked such a call does nothing instead.
    """
    reporter = reporter or RecordingReporter()
    if isinstance(through, str):
        shipped = discover(_directory(settings, migrations_dir))
        last = find(shipped, through)
        chosen = [m for m in shipped if m <= last]
    else:
        chosen = from_files(Path(p) for p in through)
    result = BaselineResult()
    with _session(settings, reporter, resume, locked=True) as s:
        applied = marker.applied(s.conn)
        s.conn.rollback()
        if applied and when_unmarked:
            result.skipped = True
            return result
        result.already = [m.key for m in chosen if m.key in applied]
        new = [m for m in chosen if m.key not in applied]
        if new and applied and not force:
            raise MaintError(
                f"{marker.TABLE} already records {len(applied)} migration(s): baseline is for "
                f"databases without a marker; to record {new[0].key}"
                f"{' and others' if len(new) > 1 else ''} as applied without running, use --force"
            )
        sums = [(m, checksum(m)) for m in new]
        marker.ensure(s.conn)
        with s.conn, s.conn.cursor() as cur:
            for m, digest in sums:
                marker.record(
                    cur,
                    key=m.key,
                    filename=m.name,
                    checksum=digest,
                    mode=marker.BASELINE,
                    duration=None,
                    host=settings.node_name,
                    package_version=package_version,
                )
        result.recorded = [m.key for m in new]
    if result.recorded:
        reporter.info(
            f"recorded {len(result.recorded)} migration(s) as applied, without running them "
            f"({result.recorded[0]} .. {result.recorded[-1]})"
        )
    return result


def backup_now(settings: Settings, reporter: Reporter, *, label: str = "manual") -> Path:
    """A pg_dump of the database now, into [paths] backup, with rotation."""
    with _session(settings, reporter, "ivle-maint db backup") as s:
        params = s.params
    db = settings["database"]
    path = backups.dump(params, settings.path_of("backup"), label=label, keep=db["backup_keep"])
    reporter.info(f"backup: {path} (restore: {backups.restore_command(params, path)})")
    return path

"""IVLE's upgrade procedure, "Patching the database": apply new migrations on the master.

Library functions the procedure, the packaging hooks and the CLI call:

    status(settings)                    -> Status       what is applied, pending, changed
    preflight(settings, ...)            -> Plan         read + classify; raise on any problem
    apply_migrations(settings, reporter, ...) -> MigrateResult   lock, back up, apply
    record_baseline(settings, through, ...)   -> BaselineResult  record as applied, run nothing
    backup_now(settings, reporter)      -> Path         a pg_dump now

Each pending migration runs in one transaction together with its marker
row (table ivle_maint_migrations, see db.marker), so a failure leaves
neither.  Nothing here prints: messages go to the reporter, results come
back as dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..db import backup as backups
from ..db import marker, pins, retry
from ..db.apply import Applied, Failed, apply
from ..db.connect import ConnectParams, params_from_settings
from ..db.discovery import check_writers, checksum, discover, find, from_files
from ..db.migration_class import MigrationClass, who
from ..db.plan import Changed, Plan, Status, canonical, class_of, make_plan, read_status
from ..db.session import session as _session
from ..db.status import directory_of as _directory
from ..db.status import status
from ..errors import MaintError
from ..gates.text import ivle_maint
from ..output import RecordingReporter, Reporter

# The public API's types, importable from here.
__all__ = [
    "Applied",
    "BaselineResult",
    "Changed",
    "MigrateResult",
    "Plan",
    "Status",
    "apply_migrations",
    "backup_now",
    "preflight",
    "record_baseline",
    "release_classes",
    "status",
]


RESUME = "ivle-maint db migrate"


@dataclass
class MigrateResult:
    applied: list[Applied] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    backup: Path | None = None  # the database before this run
    reused: bool = False  # backup is an earlier dump: nothing was applied since
    upgrade_backup: Path | None = None  # the database before the upgrade began
    up_to_date: bool = False


@dataclass
class BaselineResult:
    recorded: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    skipped: bool = False  # when_unmarked and the marker already had rows


def release_classes(
    settings: Settings,
    *,
    migrations_dir: Path | str | None = None,
    every: bool = False,
    accept_class: Sequence[str] = (),
    reporter: Reporter | None = None,
) -> list[MigrationClass]:
    """The class of every pending migration (every: of every shipped one,
    without asking the database).  A file that cannot run is destructive,
    "not proven", with the reason."""
    directory = _directory(settings, migrations_dir)
    shipped = discover(directory)
    if not every:
        with _session(settings, reporter or RecordingReporter(), None) as s:
            shipped = read_status(s.conn, s.params.dbname, directory, shipped).pending
    check_writers(directory, [m.path for m in shipped])
    accepted = [canonical(key) or key for key in accept_class]
    return [class_of(m, accepted) for m in shipped]


def preflight(
    settings: Settings,
    *,
    migrations_dir: Path | str | None = None,
    accept_changed: Sequence[str] = (),
    allow_out_of_order: bool = False,
    accept_class: Sequence[str] = (),
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
        st = read_status(s.conn, s.params.dbname, directory, shipped)
        plan = _plan(s.conn, st, accept_changed, allow_out_of_order, accept_class)
    if check:
        plan.raise_problems(resume)
    return plan


def status_or_plan(
    settings: Settings,
    *,
    migrations_dir: Path | str | None = None,
    accept_changed: Sequence[str] = (),
    allow_out_of_order: bool = False,
    accept_class: Sequence[str] = (),
    reporter: Reporter | None = None,
    resume: str | None = None,
) -> Status | Plan:
    """The marker read once, on one connection: preflight(check=False)'s
    Plan, or the Status alone when the database is unmarked (tables, no
    record of what was applied: every file would be pending, and nothing
    is classified).  Changes nothing."""
    directory = _directory(settings, migrations_dir)
    shipped = discover(directory)
    with _session(settings, reporter or RecordingReporter(), resume) as s:
        st = read_status(s.conn, s.params.dbname, directory, shipped)
        if st.unmarked:
            return st
        return _plan(s.conn, st, accept_changed, allow_out_of_order, accept_class)


def _plan(conn: Any, st: Status, accept_changed: Sequence[str], allow_out_of_order: bool,
          accept_class: Sequence[str]) -> Plan:
    check_writers(st.directory, [m.path for m in st.pending])
    return make_plan(conn, st, accept_changed, allow_out_of_order, accept_class)


def apply_migrations(
    settings: Settings,
    reporter: Reporter,
    *,
    migrations_dir: Path | str | None = None,
    accept_changed: Sequence[str] = (),
    allow_out_of_order: bool = False,
    accept_class: Sequence[str] = (),
    backup: bool | None = None,
    package_version: str | None = None,
    resume: str | None = RESUME,
    upgrade: str | None = None,
    epoch: str = "",
    terminate_stale_lock: bool = False,
    on_pending: Callable[[list[str]], None] | None = None,
) -> MigrateResult:
    """Apply every pending migration in order, each with its marker row.

    ON_PENDING is told the keys pending under the lock, before anything is
    dumped or applied (the upgrade's journal keeps them: one read, not two).

    Under the advisory lock it re-reads the marker, so a runner that waited
    for another one does not apply anything twice.  backup=None follows
    [database] backup; no dump is taken when nothing is pending.  Within an
    upgrade (upgrade: its id; epoch: when its web-down window began), the
    first dump is pinned (db.pins) and a retry that finds the marker as the
    upgrade's last dump left it, in the same epoch, takes no new dump.
    """
    directory = _directory(settings, migrations_dir)
    shipped = discover(directory)
    db = settings["database"]
    result = MigrateResult()
    with _session(settings, reporter, resume, locked=True,
                  terminate_stale_lock=terminate_stale_lock) as s:
        st = read_status(s.conn, s.params.dbname, directory, shipped)
        if on_pending is not None:
            on_pending([m.key for m in st.pending])
        check_writers(directory, [m.path for m in st.pending])
        plan = make_plan(s.conn, st, accept_changed, allow_out_of_order, accept_class)
        plan.raise_problems(resume)
        if not plan.pending and not plan.accept:
            reporter.info(
                f"database {s.params.dbname} is up to date ({len(st.applied)} migrations applied)"
            )
            result.up_to_date = True
            return result
        if plan.pending and (db["backup"] if backup is None else backup):
            _back_up(settings, s.params, plan.pending[0].key, st, result,
                     reporter=reporter, upgrade=upgrade, epoch=epoch)
        marker.ensure(s.conn)
        _accept(s.conn, plan.accept, reporter)
        result.accepted = [c.key for c in plan.accept]
        total = len(plan.pending)
        policy = retry.from_settings(settings)
        for done, c in enumerate(plan.pending):
            reporter.progress("migrations", done, total)
            override = _class_override(plan.classes[done])
            try:
                applied = apply(s.conn, c, host=settings.node_name,
                                package_version=package_version, policy=policy,
                                tell=reporter.info, class_override=override)
            except Failed as exc:
                raise MaintError(_failure(str(exc), settings, result, upgrade),
                                 resume=resume) from None
            result.applied.append(applied)
            reporter.info(f"applied {c.key} ({c.mode}) in {applied.seconds:.1f}s")
            if override is not None:
                reporter.info(f"{c.key}: {override[0]}, accepted by {override[1]}")
        reporter.progress("migrations", total, total)
    return result


def _class_override(cls: MigrationClass) -> tuple[str, str] | None:
    """What --accept-class took for this migration and who, for its marker
    row (written in the row's own transaction: never applied without it)."""
    if not (cls.overrides and cls.accepted):
        return None
    found = cls.found
    return f"accepted {cls.declared}, found {found.cls} ({found.describe()})", who()


def _back_up(settings: Settings, params: ConnectParams, first_key: str, st: Status,
             result: MigrateResult, *, reporter: Reporter, upgrade: str | None,
             epoch: str) -> None:
    """Dump before the first pending migration, or reuse the upgrade's last dump."""
    directory = settings.path_of("backup")
    fingerprint = pins.marker_fingerprint(st.applied)
    reused = pins.reusable(directory, upgrade, fingerprint, epoch) if upgrade else None
    if reused is not None:
        result.backup, result.reused = reused, True
        reporter.info(f"backup: {reused} (nothing applied since it was taken)")
    else:
        reporter.info(f"backing up database {params.dbname} (pg_dump)")
        result.backup = backups.dump(params, directory, label=f"before-{first_key}",
                                     keep=settings["database"]["backup_keep"])
        if upgrade:
            pins.record(directory, upgrade, result.backup, fingerprint, epoch)
        reporter.info(f"backup: {result.backup}")
    if upgrade:
        result.upgrade_backup = pins.first_dump(directory, upgrade)


def _failure(message: str, settings: Settings, result: MigrateResult,
             upgrade: str | None) -> str:
    if result.applied:
        message += f"; {len(result.applied)} earlier migration(s) of this run stay applied"
    if upgrade:  # the upgrade's restore point holds the dump: rollback restores it whole
        first = result.upgrade_backup or result.backup
        if first:
            message += (f"; the database before this upgrade: {first} (to go back, package "
                        f"and database: {ivle_maint('rollback')})")
        return message
    if result.backup:
        message += (f"; backup taken before this run: {result.backup} (to put it back, not "
                    f"over the live database: {restore_command(settings, result.backup)})")
    return message


def restore_command(settings: Settings, path: Path) -> str:
    """backups.restore_command for this site: as [rollback] connect_as (who
    may create and rename databases), the new database owned by IVLE's
    database user."""
    params = params_from_settings(settings, settings["rollback"]["connect_as"])
    try:
        owner = settings.ivle_conf().database.get("username") or None
        fill_as: ConnectParams | None = params_from_settings(settings, "ivle-conf")
    except MaintError:
        owner = fill_as = None
    return backups.restore_command(params, path, owner=owner and str(owner), fill_as=fill_as)


def upgrade_completed(settings: Settings, upgrade: str, unfinished: Sequence[str]) -> None:
    """UPGRADE is complete: its first dump stays pinned as the last completed one's."""
    directory = settings.path_of("backup")
    if (directory / pins.PINS_FILE).exists():
        pins.complete(directory, upgrade, unfinished)


def upgrade_backup(settings: Settings, upgrade: str) -> tuple[Path, str | None] | None:
    """The dump that restores the database as it was before UPGRADE, and the
    command that restores it (None when the connection settings are unreadable)."""
    path = pins.first_dump(settings.path_of("backup"), upgrade)
    if path is None:
        return None
    try:
        return path, restore_command(settings, path)
    except MaintError:
        return path, None


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


def record_baseline(
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
    reporter.info(f"backup: {path} (to put it back: {restore_command(settings, path)})")
    return path

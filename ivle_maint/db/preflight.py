"""The migrate step's preflight and plan: what the after-phase's migrations and their
dump need, proved while the site is still up (the rule: ivle_maint/preflight.py).

    every pending migration parsed and its file safe; the marker created
    if missing, a row inserted and updated (rolled back); for its dump:
    pg_dump found, every table and sequence read (`SELECT 1 ... LIMIT 0`
    as the role that dumps, row security off as pg_dump sets it), a file
    created and removed in [paths] backup, room there.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import system
from ..errors import MaintError
from ..gates.rewrite import existing_parent, prove_writable
from ..gates.text import first_line, ivle_maint
from ..installed import old_migration_files
from ..pgdriver import psycopg2, sql
from . import migrations
from .classify import Classified, classify
from .connect import connect, params_from_settings
from .discovery import check_writers, discover
from .marker import why_not_writable
from .migration_class import MigrationClass, release_class
from .plan import classes_of

if TYPE_CHECKING:
    from ..context import UpgradeContext


def check_migrations(ctx: UpgradeContext) -> None:
    """The migrations can run and, when any is pending, be dumped first."""
    if check_database(ctx):
        check_backup_room(ctx)


def classified_after_baseline(ctx: UpgradeContext) -> tuple[int, list[Classified]]:
    """For a database without a marker: (old migrations the baseline step
    will record, every other shipped migration read and classified).

    Raises MaintError when nothing says which migrations OLD shipped, or
    when a new file does not parse.
    """
    old = old_migration_files(ctx)
    if old is None:
        raise MaintError(
            f"the database has no migration marker and the migrations of {ctx.old} are "
            f"no longer known: record them with '{ivle_maint('db', 'baseline', 'THROUGH')}' first"
        )
    old_names = {p.name for p in old}
    new = [m for m in discover(ctx.preflight_migrations) if m.name not in old_names]
    # The files the upgrade will run: as migrate itself checks them, but now.
    check_writers(ctx.preflight_migrations, [m.path for m in new])
    return len(old), [classify(m) for m in new]


def check_database(ctx: UpgradeContext) -> int:
    """The migrations can run: marker or a baseline source, all files parse,
    and the role may create (or write) the marker table.

    Returns the number of pending migrations.
    """
    status = migrations.status(ctx.settings, migrations_dir=ctx.preflight_migrations,
                               reporter=ctx.reporter)
    if status.unmarked:
        classified = classified_after_baseline(ctx)[1]
        refusals = classes_of(classified, ctx.accept_class)[1]
        if refusals:
            raise MaintError(refusals[0])
        pending = len(classified)
    else:
        try:
            plan = migrations.preflight(
                ctx.settings, migrations_dir=ctx.preflight_migrations,
                accept_changed=ctx.accept_changed, allow_out_of_order=ctx.allow_out_of_order,
                accept_class=ctx.accept_class, reporter=ctx.reporter, resume=ctx.resume,
            )
        except MaintError as exc:
            # One line, unless the way on needs an option (a changed applied file).
            if exc.resume and "--accept-" not in exc.resume:
                exc.resume = None
            raise
        pending = len(plan.pending)
    if pending or status.unmarked:
        with_database(ctx, check_marker_writable)
    return pending


def with_database(ctx: UpgradeContext, check: Callable[[UpgradeContext, Any], None]) -> None:
    params = params_from_settings(ctx.settings)
    conn = connect(params, wait_timeout=ctx.settings["database"]["wait_timeout"],
                   reporter=ctx.reporter)
    try:
        check(ctx, conn)
    finally:
        conn.close()


def check_marker_writable(ctx: UpgradeContext, conn: Any) -> None:
    """The database role may create the marker table, or write the one there."""
    why = why_not_writable(conn)
    if why:
        raise MaintError(f"database {conn.info.dbname}: {why}")


def check_backup_writable(directory: Path) -> None:
    """A file really created and removed where the dump will go."""
    try:
        prove_writable(directory)
    except OSError as exc:
        raise MaintError(
            f"{existing_parent(directory)}: backups cannot be written there ({exc.strerror}): "
            "make it writable or set [database] backup = false"
        ) from None


def check_backup_room(ctx: UpgradeContext) -> None:
    """A pg_dump is smaller than the database; refuse when even that won't fit."""
    if not ctx.settings["database"]["backup"]:
        return
    directory = ctx.settings.path_of("backup")
    check_backup_writable(directory)
    if system.which("pg_dump") is None:
        raise MaintError("pg_dump not found (install postgresql-client, or set "
                         "[database] backup = false)")
    with_database(ctx, _check_room)
    with_database(ctx, check_tables_readable)


def _check_room(ctx: UpgradeContext, conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        size = int(cur.fetchone()[0])
    directory = ctx.settings.path_of("backup")
    existing = directory if directory.exists() else directory.parent
    free = shutil.disk_usage(existing).free
    if free < size:
        raise MaintError(
            f"{directory}: {free // 2**20} MiB free, the database is {size // 2**20} MiB: "
            "make room for its backup or set [database] backup = false"
        )


# What pg_dump reads, as it chooses it: tables and sequences outside the
# system schemas, not an extension's own.
_DUMPED = """
SELECT n.nspname, c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'S')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1, 2
"""


def check_tables_readable(ctx: UpgradeContext, conn: Any) -> None:
    """Every table and sequence the dump reads, read by the role that dumps
    (the same connection parameters), with row security off as pg_dump
    sets it: a policy that would hide rows fails here as it fails there."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        role = cur.fetchone()[0]
        cur.execute(_DUMPED)
        relations = cur.fetchall()
        cur.execute("SET LOCAL row_security = off")
        for schema, name, kind in relations:
            what = "sequence" if kind == "S" else "table"
            query = sql.SQL("SELECT 1 FROM {}.{} LIMIT 0").format(
                sql.Identifier(schema), sql.Identifier(name))
            try:
                cur.execute("SAVEPOINT ivle_maint_read")
                cur.execute(query)
                cur.execute("RELEASE SAVEPOINT ivle_maint_read")
            except psycopg2.Error as exc:
                conn.rollback()
                why = first_line(exc)
                raise MaintError(
                    f"database {conn.info.dbname}: role {role} cannot read {what} "
                    f"{schema}.{name} ({why}), so its backup would fail: GRANT SELECT ON "
                    f"{schema}.{name} TO {role}, or set [database] backup = false"
                ) from None
    conn.rollback()


def plan_lines(ctx: UpgradeContext, source: str | None, baseline: str) -> list[str]:
    """The plan's lines for the migrations (SOURCE: what to call
    ctx.new_migrations; BASELINE: the step that records the old ones)."""
    # The new version's migrations when they are known (--migrations, or
    # the new package's manifest as ctx.new_migrations), else the installed ones.
    directory = ctx.preflight_migrations
    plan = migrations.status_or_plan(
        ctx.settings, migrations_dir=directory, accept_changed=ctx.accept_changed,
        allow_out_of_order=ctx.allow_out_of_order, accept_class=ctx.accept_class,
        reporter=ctx.reporter,
    )
    if isinstance(plan, migrations.Status):  # unmarked
        try:
            recorded, pending = classified_after_baseline(ctx)
        except MaintError as exc:
            return [f"migrations: blocked: {exc}"]
        lines = [f"no migration marker yet: {baseline} records the {recorded} migrations of "
                 f"{ctx.old} as applied, without running them"]
        classes, problems = classes_of(pending, ctx.accept_class)
    else:
        pending, classes, problems, lines = plan.pending, plan.classes, plan.problems, []
    lines.append(f"pending migrations in {source or directory}: {len(pending)}")
    if ctx.new_migrations is None and ctx.migrations_dir is None:
        # Before the upgrade these are the old version's files: say so, or
        # "0 pending" reads as "NEW has no migrations".
        lines.append(f"  (read [paths] migrations, the installed version's files; {ctx.new}'s "
                     "may add more: give --new-migrations with its package's preinst, or "
                     "--migrations DIR)")
    lines += [f"  {c.key} ({c.mode})" for c in pending]
    lines += release_lines(classes)
    lines += [f"  blocked: {problem}" for problem in problems]
    return lines


def release_lines(classes: list[MigrationClass]) -> list[str]:
    """The release's class, and each migration that decided it with its statement."""
    if not classes:
        return []
    top, deciding = release_class(classes)
    more = len(deciding) - SHOWN
    return [f"release class: {top} (additive: the old code keeps working; locking: a table "
            "is locked while scanned or rewritten; destructive: the old code can break)",
            *(f"  decided by {c.line()}" for c in deciding[:SHOWN]),
            *([f"  and {more} more of this class ({ivle_maint('db', 'classify')})"]
              if more > 0 else [])]


SHOWN = 5  # deciding migrations the plan names

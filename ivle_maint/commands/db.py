"""ivle-maint db: the database migrations (status, baseline, migrate, classify, backup).

Thin functions over ivle_maint.db.migrations: each builds what it
needs from the settings and prints the result; none talks SQL.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from . import Context

ORDER = 40

MARKER_HELP = "the marker is the table ivle_maint_migrations in IVLE's database"


def register(sub: Any) -> None:
    db = sub.add_parser(
        "db",
        help="database migrations: status, baseline, migrate, classify, backup",
        description="Apply IVLE's database migrations (userdb/migrations/*.sql) on the "
        f"master, recording each in a marker; {MARKER_HELP}.",
    )
    cmds = db.add_subparsers(dest="db_command", metavar="ACTION")
    db.set_defaults(func=lambda ctx: _usage(db))

    def migrations_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--migrations",
            metavar="DIR",
            type=Path,
            help="the migrations directory (default: settings [paths] migrations)",
        )

    def accept_class_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--accept-class",
            metavar="KEY",
            nargs="+",
            action="extend",
            default=[],
            help="accept the milder class these migrations' headers declare",
        )

    status = cmds.add_parser("status", help="applied, pending, changed and out-of-order")
    migrations_option(status)
    status.set_defaults(func=show_status, brief=True)

    baseline = cmds.add_parser(
        "baseline",
        help="record migrations up to THROUGH as applied, without running them",
        description="For a database IVLE set up without ivle-maint: record every shipped "
        "migration up to THROUGH as already applied, running none of them.",
    )
    baseline.add_argument("through", metavar="THROUGH", help="a key (20090101-01) or file name")
    baseline.add_argument(
        "--force", action="store_true", help="add to a marker that already records migrations"
    )
    migrations_option(baseline)
    baseline.set_defaults(func=run_baseline)

    migrate = cmds.add_parser(
        "migrate",
        help="apply pending migrations (each in one transaction with its marker row)",
        description="Apply every pending migration in order, after a pg_dump backup. "
        "A file's header may say '-- ivle-maint: no-transaction' (run statement by "
        "statement) or '-- ivle-maint: empty' (a file without statements, on purpose).",
    )
    migrate.add_argument(
        "--dry-run", action="store_true", help="show how each file would run, change nothing"
    )
    migrate.add_argument(
        "--accept-changed",
        metavar="KEY",
        nargs="+",
        action="extend",
        default=[],
        help="accept that these applied migrations' files changed",
    )
    migrate.add_argument(
        "--allow-out-of-order",
        action="store_true",
        help="apply shipped migrations older than the newest applied one",
    )
    accept_class_option(migrate)
    migrate.add_argument("--no-backup", action="store_true", help="skip the pg_dump backup")
    migrate.add_argument(
        "--package-version", metavar="VERSION", help="IVLE's version, recorded in the marker"
    )
    migrations_option(migrate)
    migrate.set_defaults(func=run_migrate)

    classify = cmds.add_parser(
        "classify",
        help="each pending migration's class: additive, locking or destructive",
        description="One line per pending migration (--all: every shipped one, without "
        "asking the database): its key, its class (additive: the old code keeps working; "
        "locking: a table is scanned or rewritten under a lock that blocks writes; "
        "destructive: the old code can break, or not proven otherwise) and the statement "
        "that decided it.  A header '-- ivle-maint: CLASS' declares a class; a milder one "
        "than found is refused unless accepted.  Exits 1 when one is refused.",
    )
    classify.add_argument("--all", action="store_true", help="every shipped migration")
    accept_class_option(classify)
    migrations_option(classify)
    classify.set_defaults(func=show_classes)

    backup = cmds.add_parser("backup", help="pg_dump the database now into [paths] backup")
    backup.set_defaults(func=run_backup)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def show_status(ctx: Context) -> int:
    """Print every shipped migration's state, and what would block migrate."""
    from ..db.status import status  # reading only: no classifying, applying, pg_dump
    from ..gates.text import ivle_maint

    st = status(ctx.settings, migrations_dir=ctx.args.migrations, reporter=ctx.reporter)
    changed = {c.key: c for c in st.changed}
    late = {m.key for m in st.out_of_order}
    marker = "table ivle_maint_migrations" if st.marker else "no marker table"
    lines = [f"database {st.dbname}: {marker}, {len(st.applied)} applied",
             f"migrations: {st.directory} ({len(st.shipped)} shipped)"]
    for m in st.shipped:
        row = st.applied.get(m.key)
        if m.key in changed:
            state = "changed"
        elif row is not None:
            state = "applied"
        else:
            state = "out-of-order" if m.key in late else "pending"
        detail = ""
        if row is not None:
            took = f" {row.duration:.1f}s" if row.duration is not None else ""
            when = f"{row.applied_at:%Y-%m-%d %H:%M}" if row.applied_at else "(time unknown)"
            detail = f"  {when} {row.mode}{took} on {row.host}"
        lines.append(f"{state:<13}{m.key:<13}{detail}")
        if row is not None and row.class_override:
            lines.append(f"{'':<13}{'':<13}  {row.class_override}, accepted by "
                         f"{row.class_override_by}")
    lines.extend(f"{'not-shipped':<13}{key:<13}  applied, but no file for it any more"
                 for key in st.missing)
    if st.unmarked:
        lines.append(
            f"database {st.dbname} has tables but no marker, so every migration shows as "
            f"pending: an upgrade (IVLE's package, or '{ivle_maint('upgrade')}') records the "
            "installed version's migrations itself; before migrating by hand, record them "
            f"with '{ivle_maint('db', 'baseline', 'THROUGH')}' (the newest one that version "
            "shipped)"
        )
    print("\n".join(lines))  # one write: 300 lines are 300 writes otherwise
    return 0


def run_baseline(ctx: Context) -> int:
    """Record migrations up to THROUGH as applied."""
    from ..db import migrations
    from ..errors import UsageError

    ctx.refuse_unsafe()
    try:
        result = migrations.record_baseline(
            ctx.settings,
            ctx.args.through,
            ctx.reporter,
            migrations_dir=ctx.args.migrations,
            force=ctx.args.force,
            resume=_again(ctx.args, "baseline", ctx.args.through,
                          *(["--force"] if ctx.args.force else [])),
        )
    except UsageError as exc:  # THROUGH names no shipped migration
        raise UsageError(f"db baseline: {exc}") from None
    if not result.recorded:
        ctx.reporter.info(f"nothing to record: {len(result.already)} already recorded")
    return 0


def _print_plan(plan: Any, backup: bool) -> None:
    from ..db.classify import NO_TRANSACTION, OWN_TRANSACTION

    if not plan.pending:
        print("no pending migrations")
    if plan.pending and backup:
        print("-- first: pg_dump of the database into [paths] backup")
    classes = {k.key: k for k in plan.classes}
    for c in plan.pending:
        note = {
            OWN_TRANSACTION: "its own BEGIN/COMMIT (lines "
            + ", ".join(str(s.line) for s in c.stripped)
            + ") replaced by ivle-maint's transaction",
            NO_TRANSACTION: "opted out: statements run one by one, no rollback on failure",
        }.get(c.mode, "wrapped in one transaction")
        print(f"-- {c.key}: {c.migration.path}")
        print(f"-- mode {c.mode}: {note}; {len(c.statements)} statement(s)")
        if c.key in classes:
            k = classes[c.key]
            print(f"-- class {k.cls}: {k.found.describe()}")
        for why in {why for _, why in c.nontransactional}:
            print(f"-- runs outside a transaction: {why}")
        if c.mode != NO_TRANSACTION:
            print("BEGIN;")
        for s in c.statements:
            print(s.text)
        print(f"-- marker row for {c.key} ({c.mode}) in ivle_maint_migrations")
        if c.mode != NO_TRANSACTION:
            print("COMMIT;")
    for c in plan.accept:
        print(f"-- accept the changed file of {c.key}")
    for problem in plan.problems:
        print(f"-- blocked: {problem}")


def _again(args: argparse.Namespace, action: str, *words: str) -> str:
    """`ivle-maint db ACTION WORDS` with the options of ARGS this run was
    given, each word quoted (gates.text): pasted, it runs this command again
    on the same migrations, not those of [paths] migrations."""
    from ..context import RunOptions
    from ..gates.text import command

    given = [*words, *RunOptions(
        allow_out_of_order=getattr(args, "allow_out_of_order", False),
        accept_changed=tuple(getattr(args, "accept_changed", ())),
        accept_class=tuple(getattr(args, "accept_class", ()))).arguments()]
    if args.migrations is not None:  # absolute: it may be pasted elsewhere
        given += ["--migrations", os.path.abspath(args.migrations)]
    return command("ivle-maint", "db", action, *given)


def run_migrate(ctx: Context) -> int:
    """Apply pending migrations, or show them with --dry-run."""
    from ..db import migrations

    args = ctx.args
    options: dict[str, Any] = {
        "migrations_dir": args.migrations,
        "accept_changed": args.accept_changed,
        "allow_out_of_order": args.allow_out_of_order,
        "accept_class": args.accept_class,
    }
    if args.dry_run:
        plan = migrations.preflight(ctx.settings, reporter=ctx.reporter, check=False, **options)
        backup = ctx.settings["database"]["backup"] and not args.no_backup
        _print_plan(plan, backup)
        plan.raise_problems()
        return 0
    ctx.refuse_unsafe("backup")
    result = migrations.apply_migrations(
        ctx.settings,
        ctx.reporter,
        backup=False if args.no_backup else None,
        package_version=args.package_version,
        resume=_again(args, "migrate", *(["--no-backup"] if args.no_backup else []),
                      *(["--package-version", args.package_version]
                        if args.package_version else [])),
        **options,
    )
    if result.applied:
        total = sum(a.seconds for a in result.applied)
        ctx.reporter.info(f"applied {len(result.applied)} migration(s) in {total:.1f}s")
    return 0


def show_classes(ctx: Context) -> int:
    """Print each pending (or every) migration's class and what decided it."""
    from ..db import migrations
    from ..db.migration_class import listed, release_class
    from ..errors import UsageError

    classes = migrations.release_classes(
        ctx.settings, migrations_dir=ctx.args.migrations, every=ctx.args.all,
        accept_class=ctx.args.accept_class, reporter=ctx.reporter)
    if not classes:
        print("no pending migrations" if not ctx.args.all else "no migrations shipped")
        return 0
    for c in classes:
        print(c.line())
    unknown = sorted(set(ctx.args.accept_class) - {c.key for c in classes}
                     - {c.key + ".sql" for c in classes})
    if unknown:
        raise UsageError(f"db classify --accept-class {unknown[0]}: not a migration listed")
    top, deciding = release_class(classes)
    print(f"release class: {top} (decided by {listed([c.key for c in deciding])})")
    return 1 if any(c.refused for c in classes) else 0


def run_backup(ctx: Context) -> int:
    """pg_dump the database now."""
    from ..db import migrations

    ctx.refuse_unsafe("backup")
    migrations.backup_now(ctx.settings, ctx.reporter)
    return 0

"""ivle-maint plan | upgrade | rerun | hook | status: the whole procedure."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..context import ROLLING_CHOICES, RunOptions, UpgradeContext
from ..errors import MaintError, UsageError
from . import Context, checked_version

ORDER = 10

ROLE_HELP = "the node's role comes from [node] role in the settings"


def register(sub: Any) -> None:
    plan = sub.add_parser(
        "plan",
        help="show what this node would do for an upgrade; changes nothing",
        description=f"Show the steps, services, pending migrations and media version "
        f"change of an upgrade from OLD to NEW on this node; {ROLE_HELP}.",
    )
    _versions(plan, required_to=True)
    new_migrations = plan.add_mutually_exclusive_group()
    new_migrations.add_argument("--migrations", metavar="DIR", type=Path,
                                help="the new migrations (default: [paths] migrations, the "
                                "installed version's)")
    new_migrations.add_argument(
        "--new-migrations", metavar="FILE",
        help="the new package's migrations: its preinst ('dpkg-deb --info ivle_NEW.deb "
        "preinst'), or the manifest dh_ivle_maint put in it ('-': stdin)")
    _during_upgrade(plan, "plan with this mode instead of [web] during_upgrade")
    rolling(plan)
    plan.set_defaults(func=cmd_plan, brief=True)

    upgrade = sub.add_parser(
        "upgrade",
        help="run the whole upgrade procedure on this node",
        description="Run IVLE's upgrade procedure on this node: the steps before the code "
        "changes, then (with --source) './setup.py build' and './setup.py install' in DIR, "
        "then the steps after.  Without --source the new code must already be in place.",
    )
    _versions(upgrade, required_to=False)
    upgrade.add_argument("--source", metavar="DIR", type=Path,
                         help="an IVLE source tree to build and install between the phases")
    upgrade.add_argument("--migrations", metavar="DIR", type=Path,
                         help="the new migrations (default: DIR/userdb/migrations with "
                         "--source, else [paths] migrations)")
    _run_options(upgrade)
    upgrade.set_defaults(func=cmd_upgrade)

    rerun = sub.add_parser(
        "rerun",
        help="continue a failed upgrade from the step that failed",
        description="Continue the unfinished upgrade on this node; steps already done "
        "are not repeated.  A finished upgrade is left alone.  When the new code is "
        "not installed yet (dpkg's record of the package, or ./setup.py install never "
        "finished), only the steps before the code change run, and the command that "
        "installs the code is printed.",
    )
    _run_options(rerun)
    rerun.add_argument("--from", dest="old", metavar="OLD",
                       help="with several unfinished upgrades: the one from OLD ('' for a "
                       "fresh install's)")
    rerun.add_argument("--to", dest="new", metavar="NEW",
                       help="with several unfinished upgrades: the one to NEW")
    rerun.add_argument("--abandon", action="store_true",
                       help="give the site back on the old code instead (only while the "
                       "new code is not installed)")

    rerun.set_defaults(func=cmd_rerun)

    hook = sub.add_parser(
        "hook",
        help="entry point for IVLE's maintainer scripts (dpkg's arguments)",
        description="Called by IVLE's preinst, postinst, prerm and postrm with dpkg's "
        "arguments, e.g. 'ivle-maint hook preinst upgrade 1.0 1.1'.",
    )
    hook.add_argument("script", choices=("preinst", "postinst", "prerm", "postrm"),
                      help="the maintainer script calling")
    hook.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS",
                      help="dpkg's arguments to that script, passed on unchanged (\"$@\")")
    hook.add_argument("--new-migrations", metavar="MANIFEST",
                      help="the new version's migrations for the preinst's preflight: a "
                      "manifest written by dh_ivle_maint ('-': stdin); given before SCRIPT")
    hook.add_argument("--package", default="ivle", help="IVLE's package name (default: ivle)")
    hook.add_argument("--package-version", metavar="VERSION",
                      help="the script's package version (default: asked of dpkg)")
    hook.set_defaults(func=cmd_hook)

    status = sub.add_parser("status", help="show this node's upgrade journals",
                            description="Show every recorded upgrade and its steps.")
    status.set_defaults(func=cmd_status)


def _versions(parser: argparse.ArgumentParser, *, required_to: bool) -> None:
    parser.add_argument("--from", dest="old", metavar="OLD",
                        help="the installed version (default: the one ivle-maint recorded)")
    parser.add_argument("--to", dest="new", metavar="NEW", required=required_to,
                        help="the version being installed")


def _during_upgrade(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--during-upgrade", choices=("stop", "maintenance"), default="",
                        help=help_text)


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a run of the procedure (RunOptions), as upgrade and rerun take them."""
    parser.add_argument("--allow-out-of-order", action="store_true",
                        help="apply shipped migrations older than the newest applied one")
    parser.add_argument("--accept-changed", metavar="KEY", action="append", default=[],
                        help="accept that applied migration KEY's file has changed")
    parser.add_argument("--accept-class", metavar="KEY", action="append", default=[],
                        help="accept the milder class pending migration KEY's header declares")
    parser.add_argument("--migrate-while-serving", action="store_true",
                        help="migrate even while slaves serve the old code (see [cluster])")
    _during_upgrade(parser, "what clients see while the web server is down: refused "
                    "connections (stop) or a 503 maintenance page (default: [web] "
                    "during_upgrade)")
    parser.add_argument("--terminate-stale-lock", action="store_true",
                        help="end the database session of a killed ivle-maint on this host "
                        "that still holds the migration lock")
    rolling(parser)


def rolling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rolling", choices=ROLLING_CHOICES, default="",
                        help="roll the release one slave at a time behind the balancer: "
                        "auto (when it can), always (refuse a release that cannot), never "
                        "(default: [cluster] rolling)")


def _options(args: argparse.Namespace) -> RunOptions:
    """RunOptions from a command line that _run_options declared."""
    return RunOptions(allow_out_of_order=args.allow_out_of_order,
                      accept_changed=tuple(args.accept_changed),
                      accept_class=tuple(args.accept_class),
                      migrate_while_serving=args.migrate_while_serving,
                      terminate_stale_lock=args.terminate_stale_lock,
                      during_upgrade=args.during_upgrade,
                      rolling=args.rolling)


def _checked_versions(ctx: Context, command: str) -> None:
    checked_version(ctx.args.old, f"{command} --from")
    checked_version(ctx.args.new, f"{command} --to")


def _old_version(ctx: Context) -> str:
    from ..installed import recorded_version

    old = ctx.args.old or recorded_version(ctx.settings)
    if not old:
        raise UsageError("no installed version recorded; give it with --from OLD")
    return str(old)


def cmd_plan(ctx: Context) -> int:
    """Print this node's plan for OLD -> NEW."""
    from ..plan import describe

    _checked_versions(ctx, "plan")
    up = UpgradeContext(ctx.settings, ctx.reporter, old=_old_version(ctx), new=ctx.args.new,
                        options=RunOptions(during_upgrade=ctx.args.during_upgrade,
                                           rolling=ctx.args.rolling),
                        migrations_dir=ctx.args.migrations)
    if ctx.args.new_migrations is None:
        lines = describe(up)
    else:
        from ..migration_manifest import read

        manifest = read(ctx.args.new_migrations)
        source = "stdin" if ctx.args.new_migrations == "-" else ctx.args.new_migrations
        owner = f"{manifest.package or 'ivle'} {manifest.version or up.new}"
        with tempfile.TemporaryDirectory(prefix="ivle-maint-plan-") as directory:
            up.new_migrations = manifest.write_to(Path(directory))
            # The temporary copy is gone when the plan is read: name the package's files.
            lines = [line.replace(f"{directory}/", f"{owner}'s migration ")
                     .replace(directory, f"{owner}'s migrations")
                     for line in describe(up, f"{owner}'s manifest ({source})")]
    for line in lines:
        print(line)
    return 0


def cmd_upgrade(ctx: Context) -> int:
    """Run both phases, building and installing a source tree in between."""
    from ..context import AFTER, BEFORE
    from ..source import check_source, install_source, source_version
    from ..upgrade import run_phases, source_command

    _checked_versions(ctx, "upgrade")
    source: Path | None = ctx.args.source
    if source is not None:
        # Absolute: setup.py runs with the tree as its cwd, and a rerun (or
        # the printed resume command) may start from another directory.
        source = source.absolute()
        check_source(source)
    new = ctx.args.new or (source_version(source) if source else None)
    if not new:
        raise UsageError("give the new version with --to NEW (or an IVLE tree with --source)")
    migrations = ctx.args.migrations or (source / "userdb" / "migrations" if source else None)
    if migrations is not None:  # recorded for a rerun, which may start elsewhere
        migrations = migrations.absolute()
    old = _old_version(ctx)
    up = UpgradeContext(ctx.settings, ctx.reporter, old=old, new=new,
                        options=_options(ctx.args), migrations_dir=migrations,
                        code_is_new=source is None, source=source)
    if source is None:
        run_phases(up, (BEFORE, AFTER))
        return 0
    # Rerunning the same command continues: finished steps are skipped.
    up.resume = source_command(up)
    if run_phases(up, (BEFORE,)).is_complete:
        return 0
    install_source(source, up)
    up.code_is_new = True
    run_phases(up, (BEFORE, AFTER))
    return 0


def cmd_rerun(ctx: Context) -> int:
    """Continue the unfinished upgrade, if there is one, as far as is safe."""
    from ..codestate import new_code_state
    from ..context import AFTER, BEFORE
    from ..gates.text import ivle_maint
    from ..upgrade import abort, also_abandoned, rerun_context, run_phases, unfinished

    old, new = ctx.args.old, ctx.args.new
    checked_version(old or None, "rerun --from")  # '' names a fresh install's
    checked_version(new, "rerun --to")
    journal = unfinished(ctx.settings, old=old, new=new)
    if journal is None:
        if old is not None or new is not None:
            raise UsageError(f"no unfinished upgrade from {old or '(any)'} to {new or '(any)'}"
                             f" (see: {ivle_maint('status')})")
        ctx.reporter.info("no unfinished upgrade: nothing to do")
        return 0
    code = new_code_state(journal, ctx.settings)
    up = rerun_context(ctx.settings, ctx.reporter, journal, _options(ctx.args),
                       code_is_new=code.in_place)
    if ctx.args.abandon or journal.is_aborting:
        if code.in_place:
            raise MaintError(f"cannot give the site back on {journal.old}: {journal.new}'s "
                             f"code is installed ({code.evidence}); finish the upgrade",
                             resume="ivle-maint rerun")
        undone = abort(up)
        for other in also_abandoned(ctx.settings, journal):  # it had taken them over
            undone += abort(rerun_context(ctx.settings, ctx.reporter, other,
                                          _options(ctx.args), code_is_new=False))
        ctx.reporter.info(f"upgrade {journal.old} -> {journal.new} abandoned, the site is "
                          f"back on {journal.old}; restarted: {', '.join(undone) or 'nothing'}")
        return 0
    if not code.in_place:
        # Never the after-phase: the old code would serve the new schema.
        run_phases(up, (BEFORE,))
        raise MaintError(
            f"{journal.new}'s code is not installed ({code.evidence}): the steps before the "
            f"code change are done and the web server stays down",
            resume=f"{code.install}   (or give the site back on {journal.old}: "
            "ivle-maint rerun --abandon)",
        )
    done = run_phases(up, (BEFORE, AFTER))
    if code.dpkg_owed and done.is_complete:
        ctx.reporter.warn(f"dpkg has not finished configuring {journal.package} "
                          f"({code.evidence}): run dpkg --configure -a")
    return 0


def cmd_hook(ctx: Context) -> int:
    """Run the part of the procedure that this dpkg call stands for."""
    from ..dpkg_calls import Form, parse_call

    call = parse_call(ctx.args.script, ctx.args.arguments, ctx.args.package,
                      ctx.args.package_version)
    if call.form is Form.NOTHING and ctx.args.new_migrations is None:
        # Before the procedure loads: dpkg runs the old postrm's `upgrade`
        # while the web server is down.
        ctx.reporter.info(call.nothing_line())
        return 0
    # What loading the procedure makes lives on: the cyclic collector is
    # paused while it loads and never walks it again (gc.freeze), some
    # milliseconds of the postinst's start, with the web server down.
    collecting = gc.isenabled()
    gc.disable()
    from ..hooks import HookEnv, checked_call, dpkg_options, run_hook

    gc.freeze()
    if collecting:
        gc.enable()
    call = checked_call(call, ctx.args.package_version)
    env = HookEnv(settings=ctx.settings, reporter=ctx.reporter,
                  options=dpkg_options(os.environ))
    if ctx.args.new_migrations is None:
        ctx.reporter.info(run_hook(call, env))
        return 0
    if call.script != "preinst":
        raise UsageError("--new-migrations is for the preinst only")
    from ..migration_manifest import read

    manifest = read(ctx.args.new_migrations)  # checked before anything runs
    label = f"{manifest.package or 'ivle'}_{manifest.version or 'new'}"
    with tempfile.TemporaryDirectory(prefix=f"ivle-maint-manifest-{label}-") as directory:
        env.new_migrations = manifest.write_to(Path(directory))
        try:
            ctx.reporter.info(run_hook(call, env))
        except MaintError as exc:
            # The temporary copy is gone when the message is read: name the
            # file as the package ships it.
            owner = f"{manifest.package or 'ivle'} {manifest.version or call.args[-1]}"
            if exc.path is not None and exc.path.is_relative_to(directory):
                inside = exc.path.relative_to(directory)
                exc.path_shown = f"{owner}'s migration {inside}" if inside.parts else \
                    f"{owner}'s migrations"
            raise
    return 0


def cmd_status(ctx: Context) -> int:
    """List every journal with its steps."""
    from ..db.migrations import upgrade_backup
    from ..gates.schema_hold import status_line
    from ..gates.text import ivle_maint
    from ..journal import Journal, carried_on_by, oldest_first
    from ..procedure import STEPS
    from ..rollback.point import all_points, for_upgrade
    from ..summary import summary_lines
    from ..upgrade import state_dir, upgrade_id

    paths = sorted((state_dir(ctx.settings) / "journal").glob("*.json"))
    if not paths:
        print("no upgrades recorded")
    print(status_line(ctx.settings))
    pinned = [p for p in all_points(ctx.settings) if p.pinned]
    for point in pinned:
        print(point.describe())
    if pinned:
        print(f"  go back: {ivle_maint('rollback')}; keep the release: {ivle_maint('commit')}")
    journals = oldest_first(Journal.load(path) for path in paths)
    for i, journal in enumerate(journals):
        lines = summary_lines(journal, STEPS)
        carrier = carried_on_by(journal, journals[i + 1:])
        if carrier is not None:  # nothing of its own left to rerun
            lines[0] += f" (carried on by the upgrade {carrier.old or '(none)'} -> {carrier.new})"
        for line in lines:
            print(line)
        found = upgrade_backup(ctx.settings, upgrade_id(journal))
        if found is not None:
            dump, restore = found
            print(f"  database before this upgrade: {dump}")
            kept = for_upgrade(ctx.settings, upgrade_id(journal))
            if kept is not None and kept.pinned:
                print(f"    go back (package and database): {ivle_maint('rollback')}")
            elif restore:
                print(f"    restore with: {restore}")
    sys.stdout.flush()
    return 0

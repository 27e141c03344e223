"""ivle-maint jails rebuild | remake-users: IVLE's jail tools, checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import Context

ORDER = 34

EPILOG = """\
rebuild        runs '[commands] buildjail -u' (ivle-buildjail -u) with
               IVLECONF set, output to the log with a heartbeat on a
               terminal, then checks that the jail template exists and
               matches template_build.
remake-users   runs '[commands] remakeuser LOGIN...' (IVLE's
               ivle-remakeuser -a, each login of the database's login
               table named once it is a plain name), and fails, naming
               the users, when any user's jail was not rebuilt,
               although the tool itself exits 0 then.
Both need root and run on the master, after the new IVLE is installed
(and after the database migrations); each writes a log to [paths] log."""


def register(sub: Any) -> None:
    import argparse

    parser = sub.add_parser(
        "jails",
        help="rebuild the jail template or every user's jail (master)",
        description="Run IVLE's jail tools as IVLE's upgrade procedure, 'Upgrading the jail' and "
        "'Rebuilding user jails' steps do, and check their results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="jails_action", metavar="ACTION", required=True)
    rebuild = actions.add_parser(
        "rebuild", help="ivle-buildjail -u: refresh the jail template, then check it",
        description="Run ivle-buildjail -u and check the jail template it leaves.",
    )
    rebuild.set_defaults(func=cmd_rebuild)
    remake = actions.add_parser(
        "remake-users", help="ivle-remakeuser LOGIN...: rebuild every user's jail, then check "
        "them",
        description="Run ivle-remakeuser with every login of the login table (IVLE's -a, "
        "each login checked first); users' files in home/LOGIN are kept.  Fails "
        "naming every user whose jail was not rebuilt.",
    )
    remake.set_defaults(func=cmd_remake_users)


def _locked_and_logged(ctx: Context, name: str, work: Callable[[], Any]) -> Any:
    from .. import children
    from ..lock import node_lock
    from ..logfile import limits, run_log

    ctx.refuse_unsafe("run", "log")
    settings = ctx.settings
    run_dir = settings.path_of("run")
    with node_lock(run_dir, f"jails {name}"), \
            run_log(settings.path_of("log"), f"jails-{name}", **limits(settings)) as log_path:
        ctx.reporter.info(f"log: {log_path}")
        # As an upgrade's steps: a killed run's ivle-buildjail (or its apt)
        # is ended first, and this run's commands are recorded for the next.
        children.end_leftovers(run_dir, ctx.reporter)
        with children.tracked_run(run_dir):
            return work()


def cmd_rebuild(ctx: Context) -> int:
    """Rebuild the jail template with ivle-buildjail -u."""
    from ..jails.template import rebuild_template

    result = _locked_and_logged(ctx, "rebuild",
                                lambda: rebuild_template(ctx.settings, ctx.reporter))
    ctx.reporter.info(result.summary)
    return 0


def cmd_remake_users(ctx: Context) -> int:
    """Rebuild every user's jail with ivle-remakeuser LOGIN... (IVLE's -a)."""
    from ..jails.users import remake_user_jails

    result = _locked_and_logged(
        ctx, "remake-users", lambda: remake_user_jails(ctx.settings, ctx.reporter)
    )
    ctx.reporter.info(result.summary)
    return 0

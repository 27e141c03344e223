"""ivle-maint services stop|start|restart|status [web|usrmgt|all]."""

from __future__ import annotations

from typing import Any

from . import Context

ORDER = 30

EPILOG = """\
services: 'web' is [services] web (apache2, on slaves), 'usrmgt' is
[services] usrmgt (ivle-usrmgt-server, on the master), 'all' (default) is
every service of this node's [node] role.  On a node in a cluster, an
action on the web server also updates this node's row in the cluster
table (see 'ivle-maint cluster').  Actions go through invoke-rc.d
when it exists, so policy-rc.d is obeyed (a forbidden action is reported
as skipped); see [services] backend.  Each action is verified with the
service's status, waiting up to [services] timeout seconds.  Init
scripts (and their directory) that another user owns or may write, and
settings or ivle.conf others may change, are refused (exit status 2):
ivle-maint runs the scripts as root.  While an upgrade of this node is
unfinished, starting or restarting the web server is refused (one line,
exit status 1: the schema hold, see 'ivle-maint hold'); the upgrade's
start-web step starts it, or 'ivle-maint rerun --abandon' on the old code.

'status' exits 0 when every chosen service runs, 3 otherwise."""


def register(sub: Any) -> None:
    import argparse

    parser = sub.add_parser(
        "services",
        help="stop, start, restart or check the web and user management servers",
        description="Stop, start or restart IVLE's services, or show whether they run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("stop", "start", "restart", "status"),
                        help="what to do to the services")
    parser.add_argument("which", nargs="?", default="all", choices=("web", "usrmgt", "all"),
                        help="which services (default: all of this node's)")  # fmt: skip
    parser.set_defaults(func=cmd_services)


def cmd_services(ctx: Context) -> int:
    """Run the action on the chosen services, or print their states."""
    from ..services import init_scripts

    ctx.refuse_unsafe()  # the settings name the init scripts run as root
    if ctx.args.action != "status":
        try:
            init_scripts.run_action(ctx.settings, ctx.reporter, ctx.args.action, ctx.args.which)
        finally:
            if ctx.args.which in ("web", "all") and ctx.settings.role.runs_web:
                from ..cluster.admin import record_serving

                # The other nodes must know: the master migrates only once
                # no slave's web server serves.
                record_serving(ctx.settings, ctx.reporter)
        return 0
    control = init_scripts.control_from_settings(ctx.settings, ctx.reporter)
    states = {name: control.status(name)
              for name in init_scripts.service_names(ctx.settings, ctx.args.which)}  # fmt: skip
    for name, state in states.items():
        print(f"{name}: {state}")
    return 0 if all(state == init_scripts.RUNNING for state in states.values()) else 3

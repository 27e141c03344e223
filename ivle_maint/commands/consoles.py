"""ivle-maint consoles list|stop: the processes that keep user jails busy."""

from __future__ import annotations

from typing import Any

from . import Context

ORDER = 31

EPILOG = """\
A console process is a student's process inside a user's jail: its root
directory, working directory, program or an open file lies below
MOUNTS/LOGIN (MOUNTS: ivle.conf [paths][[jails]] mounts, which must hold
users' jails only), and its uid is an IVLE user's; decided from these
kernel facts, never from a name.  IVLE's python-console backends are
labelled as such.  'stop' sends SIGTERM, waits [consoles] term_timeout
seconds, then SIGSTOP and SIGKILL until the jails are empty (at most 30
seconds more).  A process of anyone else in a jail (an administrator's
shell) is named and nothing is stopped.  Never signalled: a process
outside every jail or merely in MOUNTS itself, PID 1, ivle-maint and its
callers."""


def register(sub: Any) -> None:
    import argparse

    parser = sub.add_parser(
        "consoles",
        help="list or stop console processes and others using the user jails",
        description="List or stop the processes that use the user jails.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("list", "stop"),
                        help="list them, or stop them (SIGTERM, then SIGSTOP and SIGKILL)")
    parser.set_defaults(func=cmd_consoles)


def cmd_consoles(ctx: Context) -> int:
    """Print the jail processes, or stop them."""
    from ..consoles import jail_processes
    from ..gates.text import shown

    if ctx.args.action == "stop":
        ctx.refuse_unsafe()  # ivle.conf names the jails whose processes are signalled
        result = jail_processes.stop_consoles_for(ctx.settings, ctx.reporter)
        ctx.reporter.info(result.summary)
        return 0
    ivle = ctx.settings.ivle_conf()
    found = jail_processes.list_consoles(ivle.jail_mounts, share=ivle.share, src=ivle.jail_src)
    if found:
        print(f"{'PID':>7} {'USER':<12} {'JAIL':<12} {'WHY':<15} COMMAND")
    for proc in found:  # a login, a jail's name, a command line: escaped
        print(f"{proc.pid:>7} {shown(proc.user):<12} {shown(proc.jail or '-'):<12} "
              f"{proc.reason:<15} {proc.command}")  # fmt: skip
    ctx.reporter.info(f"{len(found)} processes use the jails under {ivle.jail_mounts}")
    return 0

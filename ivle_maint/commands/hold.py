"""ivle-maint hold check|status: the schema hold (gates/schema_hold.py)."""

from __future__ import annotations

from typing import Any

from . import Context

ORDER = 75

EPILOG = """\
While an upgrade of this node is unfinished, IVLE's web code must not run:
new code on an old schema, or old code on a new one.  The stop-web step
puts a hold in place that the system honours (with systemd, a drop-in
/etc/systemd/system/apache2.service.d/ivle-maint-hold.conf whose
ExecStartPre runs 'ivle-maint hold check', so not even a reboot starts
the web server); the start-web step lifts it once the schema and the code
agree, and so does abandoning the upgrade ('ivle-maint rerun --abandon').

'check' exits 0 when the web server may start (no unfinished upgrade, or
only the maintenance page would answer) and 1, with one line, when it may
not; 'status' prints one line."""


def register(sub: Any) -> None:
    import argparse

    parser = sub.add_parser(
        "hold",
        help="whether the web server may start now (the schema hold)",
        description="Check or show the schema hold: no IVLE web code while an upgrade "
                    "is unfinished.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("check", "status"),
                        help="check: exit 1 while the hold is on; status: one line")
    parser.set_defaults(func=cmd_hold)


def cmd_hold(ctx: Context) -> int:
    """Answer whether the web server may start (systemd's ExecStartPre asks)."""
    from ..gates import schema_hold

    if ctx.args.action == "status":
        print(schema_hold.status_line(ctx.settings))
        return 0
    schema_hold.check(ctx.settings)  # MaintError: one line, exit 1
    return 0

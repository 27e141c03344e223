"""ivle-maint rollback | commit: back to the last upgrade's restore point, or let it go."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import MaintError
from . import Context

ORDER = 12

EPILOG = """\
Every upgrade keeps a restore point on the node (ivle-maint status shows
it): the old package, ivle.conf, ivle-maint's settings, the jail template
and, on the master, the database as it was when the site stopped taking
writes.  'rollback' goes back to it from any state (upgrade completed,
failed in a step, killed), through dpkg: the kept package is installed
again, and its maintainer scripts run IVLE's procedure as a rollback.

The way back is chosen, and said, before anything stops:
  code only  every migration applied since the point is additive: the
             database stays, with every row written since;
  full       otherwise: the dump is restored into a new database, the rows
             that would be lost are listed per table, and nothing happens
             without --accept-data-loss; the replaced database is kept
             ([rollback] keep_failed_database_days).
At the end a table of checks says whether the node is really back
(package, migrations, schema, ivle.conf, template, slaves); exit 1 if not.

'commit' lets the restore point go (the release is good): its files and
template are deleted and its dump returns to rotation."""


def register(sub: Any) -> None:
    rollback = sub.add_parser(
        "rollback", help="go back to the last upgrade's restore point (package, "
        "configuration, jails, database)",
        description="Roll this node back to the restore point its last upgrade kept.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rollback.add_argument("--accept-data-loss", action="store_true",
                          help="a full rollback: replace the database by the point's dump, "
                          "losing the rows written since (listed first)")
    rollback.add_argument("--dry-run", action="store_true",
                          help="say which way back and what would be lost; change nothing")
    rollback.set_defaults(func=cmd_rollback)

    commit = sub.add_parser(
        "commit", help="keep the release: let its restore point go",
        description="Let the pinned restore point go: its kept files, package and jail "
        "template are deleted and its dump returns to rotation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commit.set_defaults(func=cmd_commit)


def cmd_rollback(ctx: Context) -> int:
    from ..gates.text import ivle_maint
    from ..rollback.point import latest_pinned
    from ..rollback.run import roll_back

    ctx.refuse_unsafe("state", "backup", "log", "run")
    point = latest_pinned(ctx.settings)
    if point is None:
        raise MaintError("no pinned restore point on this node: nothing to roll back to "
                         f"(see: {ivle_maint('status')})")
    return roll_back(ctx.settings, ctx.reporter, point,
                     accept_data_loss=ctx.args.accept_data_loss, dry_run=ctx.args.dry_run)


def cmd_commit(ctx: Context) -> int:
    from ..rollback.point import commit, finish_commits, latest_pinned

    ctx.refuse_unsafe("state", "backup")
    finish_commits(ctx.settings)  # what a killed commit left
    point = latest_pinned(ctx.settings)
    if point is None:
        ctx.reporter.info("no pinned restore point: nothing to commit")
        return 0
    removed = commit(ctx.settings, point)
    ctx.reporter.info(f"committed {point.old} -> {point.new}: its restore point is let go "
                      f"({len(removed)} kept item(s) removed)")
    return 0

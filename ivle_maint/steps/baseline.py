"""baseline: a database without a marker gets the old version's migrations."""

from __future__ import annotations

from .. import release_needs
from ..context import BEFORE, MASTER, Outcome, Step, UpgradeContext
from ..db.migrations import record_baseline
from ..installed import old_migration_files


def baseline(ctx: UpgradeContext) -> Outcome:
    """Give a database without a marker the old version's migrations."""
    release_needs.of(ctx)  # a master's first step: the decision is made before the code changes
    files = old_migration_files(ctx)
    if files is None:
        return Outcome("no record of the old version's migrations; the marker must exist")
    result = record_baseline(
        ctx.settings, files, ctx.reporter, package_version=ctx.old, when_unmarked=True,
        resume=ctx.resume,
    )
    if result.skipped:
        return Outcome("the database already has its migration marker")
    return Outcome(f"recorded {len(result.recorded)} migrations of {ctx.old} as applied",
                   {"baselined": len(result.recorded)})


STEP = Step("baseline", "record the migration baseline", MASTER, BEFORE, baseline)

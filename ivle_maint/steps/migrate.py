"""migrate: the database gets the new version's migrations."""

from __future__ import annotations

from datetime import UTC, datetime

from ..cluster.waits import wait_for_slaves
from ..context import AFTER, MASTER, Outcome, Step, UpgradeContext
from ..errors import MaintError
from .migrations import migrate as apply_migrations
from .migrations import status


def migrate(ctx: UpgradeContext) -> Outcome:
    # IVLE's procedure: slaves' web servers are down before the schema changes.
    waited = wait_for_slaves(ctx)
    result = apply_migrations(
        ctx.settings, ctx.reporter, migrations_dir=ctx.migrations,
        accept_changed=ctx.accept_changed, allow_out_of_order=ctx.allow_out_of_order,
        package_version=ctx.new, resume=ctx.resume,
        upgrade=ctx.upgrade_id or None, epoch=_epoch(ctx),
        terminate_stale_lock=ctx.terminate_stale_lock,
    )
    keys = [a.key for a in result.applied]
    summary = f"applied {len(keys)} migrations" + (f" ({', '.join(keys)})" if keys else "")
    if result.backup:
        summary += f"; backup {result.backup}"
    if result.upgrade_backup and result.upgrade_backup != result.backup:
        summary += f"; before the upgrade: {result.upgrade_backup}"
    if waited:
        summary = f"{waited}; {summary}"
    return Outcome(summary, {"migrations_applied": _applied_in_upgrade(ctx, keys)})


def _applied_in_upgrade(ctx: UpgradeContext, keys: list[str]) -> list[str]:
    """This run's KEYS and those an earlier, killed run of the upgrade applied.

    The summary is the upgrade's, not the last process's: the marker's rows
    for NEW applied (not baselined) since the upgrade began count too.
    """
    if not ctx.started:
        return keys
    since = datetime.fromtimestamp(ctx.started, UTC)
    try:
        rows = status(ctx.settings, migrations_dir=ctx.migrations).applied.values()
    except MaintError:  # the summary is not worth failing the step for
        return keys
    earlier = {r.key for r in rows if r.package_version == ctx.new and r.mode != "baseline"
               and r.applied_at >= since}
    return sorted(earlier | set(keys))


def _epoch(ctx: UpgradeContext) -> str:
    """When this attempt's first recorded step began: an abort forgets the
    steps, so a dump from before a restarted web server is not reused."""
    journal = ctx.journal
    starts = [r.started for name, r in (journal.steps.items() if journal else ())
              if name != STEP.name]
    return f"{min(starts):.6f}" if starts else ""


STEP = Step("migrate", "apply database migrations", MASTER, AFTER, migrate)

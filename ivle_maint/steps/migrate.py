"""migrate: the database gets the new version's migrations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import release_needs
from ..cluster.waits import slaves_plan_line, wait_for_slaves
from ..context import (
    AFTER,
    MASTER,
    Check,
    ClusterWait,
    Metric,
    Outcome,
    PlanLines,
    PlanPart,
    PreflightStage,
    Step,
    SummaryPart,
    UpgradeContext,
)
from ..db import preflight
from ..db.marker import BASELINE
from ..db.migrations import apply_migrations, status
from ..db.pins import PINS_FILE
from ..errors import MaintError
from ..gates.rewrite import prove_replaceable
from ..roll import decision
from ..rollback import keep, restore
from . import baseline


def migrate(ctx: UpgradeContext) -> Outcome:
    why = release_needs.of(ctx).stays_up  # nothing pending, and no slave to wait for
    if why:
        return release_needs.skipped(why)
    if ctx.rollback is not None:
        return _roll_back(ctx)
    # IVLE's procedure: slaves' web servers are down before the schema changes.
    waited = WAIT.wait(ctx, STEP.name)
    keep.database_before(ctx)  # the restore point: writes have stopped
    try:
        result = apply_migrations(
            ctx.settings, ctx.reporter, migrations_dir=ctx.migrations,
            accept_changed=ctx.accept_changed, allow_out_of_order=ctx.allow_out_of_order,
            accept_class=ctx.accept_class, package_version=ctx.new, resume=ctx.resume,
            upgrade=ctx.upgrade_id or None, epoch=_epoch(ctx),
            terminate_stale_lock=ctx.terminate_stale_lock,
            on_pending=lambda keys: _record_pending(ctx, keys),
        )
    finally:
        keep.database_dump(ctx)  # a failed migration is when a rollback is wanted
    keys = [a.key for a in result.applied]
    summary = f"applied {len(keys)} migrations" + (f" ({', '.join(keys)})" if keys else "")
    if result.backup:
        summary += f"; backup {result.backup}"
    if result.upgrade_backup and result.upgrade_backup != result.backup:
        summary += f"; before the upgrade: {result.upgrade_backup}"
    if waited:
        summary = f"{waited}; {summary}"
    return Outcome(summary, {"migrations_applied": _applied_in_upgrade(ctx, keys)})


def _roll_back(ctx: UpgradeContext) -> Outcome:
    """The database step of a rollback: a full one swaps the database only once
    no slave serves the version rolled back from; code only keeps a schema
    made for both versions, so a slave serving either needs not stop."""
    settled = restore.settle(ctx)
    if settled is not None:
        return settled
    way = restore.way_back(ctx)
    waited = WAIT.wait(ctx, STEP.name) if way.full else \
        f"code-only rollback: the schema serves {ctx.old} and {ctx.new}, no slave waited for"
    outcome = restore.database(ctx)
    if waited:
        outcome.summary = f"{waited}; {outcome.summary}"
    return outcome


def _record_pending(ctx: UpgradeContext, keys: list[str]) -> None:
    """The keys pending before this upgrade applied anything (KEYS, as
    apply_migrations read them under its lock), kept in its journal once,
    before anything is applied: a rerun after a killed run still knows
    which are its own."""
    journal = ctx.journal
    if journal is None or journal.migrations_pending is not None:
        return
    journal.migrations_pending = list(keys)
    journal.save()


def _applied_in_upgrade(ctx: UpgradeContext, keys: list[str]) -> list[str]:
    """This run's KEYS and those an earlier, killed run of the upgrade applied.

    The summary is the upgrade's, not the last process's: of the keys that
    were pending when the upgrade first reached this step (its journal),
    those the marker now holds as applied (not baselined) count too.  By
    identity, never by comparing times (gates.clock): the journal's clock
    and the database server's need not agree.
    """
    pending = ctx.journal.migrations_pending if ctx.journal else None
    if not pending or set(pending) <= set(keys):  # all of them now: no second read
        return keys
    try:
        rows = status(ctx.settings, migrations_dir=ctx.migrations).applied
    except MaintError:  # the summary is not worth failing the step for
        return keys
    earlier = {key for key in pending if key in rows and rows[key].mode != BASELINE}
    return sorted(earlier | set(keys))


def _epoch(ctx: UpgradeContext) -> str:
    """When this attempt's first recorded step began: an abort forgets the
    steps, so a dump from before a restarted web server is not reused."""
    journal = ctx.journal
    records = [r for name, r in (journal.steps.items() if journal else ()) if name != STEP.name]
    if not records:
        return ""
    # The first step begun (its recorded order, gates.clock), named by its
    # start stamp: an identity, compared for equality only.
    first = min(records, key=lambda r: (r.order, r.started))
    return f"{first.started:.6f}"


def check_pins_record(ctx: UpgradeContext) -> None:
    """The record of pinned dumps, which the upgrade's dump rewrites."""
    settings = ctx.settings
    if settings["database"]["backup"]:
        prove_replaceable(settings.path_of("backup") / PINS_FILE, "the record of pinned dumps")


def plan_lines(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return preflight.plan_lines(ctx, migrations_source, baseline.STEP.name)


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, release_needs.of(ctx).stays_up)


def show_applied(applied: Any, metrics: Mapping[str, Any]) -> str | None:
    return f"{len(applied)} {' '.join(applied)}" if isinstance(applied, list) else None


def _wait_plan(ctx: UpgradeContext, rows: Sequence[Any]) -> str:
    return slaves_plan_line(ctx, rows, STEP.name)


# IVLE's procedure: slaves' web servers are down before the schema changes.
WAIT = ClusterWait(wait_for_slaves, _wait_plan)
STEP = Step("migrate", "apply database migrations", MASTER, AFTER, migrate,
            checks=(Check(PreflightStage.DATABASE, preflight.check_migrations),
                    Check(PreflightStage.DATABASE, restore.check_way),
                    Check(PreflightStage.STATE_FILES, check_pins_record),
                    Check(PreflightStage.CLUSTER, decision.check_roll)),
            plan=(PlanLines(PlanPart.DATABASE, plan_lines), PlanLines(PlanPart.SKIPPED, skip_plan)),
            metrics=(Metric("migrations_applied", "migrations applied", SummaryPart.DATABASE,
                            show_applied),),
            cluster_wait=WAIT)

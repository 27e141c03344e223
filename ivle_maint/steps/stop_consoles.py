"""stop-consoles: no python-console runs the old code in a jail.

Nothing undoes it: consoles come back on demand.  So the after-phase
re-checks (still_stopped) and stops any that started since.
"""

from __future__ import annotations

from .. import release_needs
from ..consoles.jail_processes import list_consoles, refuse_foreign_for, stop_consoles_for
from ..context import (
    BEFORE,
    SLAVE,
    Check,
    Metric,
    Outcome,
    PlanLines,
    PlanPart,
    PreflightStage,
    Step,
    UpgradeContext,
)
from ..jaildir import check as checked_mounts


def stop_consoles(ctx: UpgradeContext) -> Outcome:
    why = release_needs.of(ctx).stays_up
    if why:
        return release_needs.skipped(why)
    result = stop_consoles_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"consoles_stopped": result.count, "killed": result.killed})


def still_stopped(ctx: UpgradeContext) -> str:
    """Processes in the jails again since the step ("" if none)."""
    if release_needs.was_skipped(ctx, STEP.name):
        return ""  # the site stays up: consoles keep running
    ivle = ctx.settings.ivle_conf()
    found = list_consoles(checked_mounts(ivle), share=ivle.share)
    if not found:
        return ""
    return f"{len(found)} processes in users' jails since the before-phase " \
           f"(first: {found[0].describe()})"


def check_jail_mounts(ctx: UpgradeContext) -> None:
    """The jail mounts directory holds users' jails only (see jaildir), and
    no process in a jail is one this step would refuse to stop (an
    administrator's shell: gates.processes).  unmount-jails needs the same."""
    checked_mounts(ctx.ivle_conf)
    refuse_foreign_for(ctx.settings)


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, release_needs.of(ctx).stays_up)


STEP = Step("stop-consoles", "stop python-console processes", SLAVE, BEFORE, stop_consoles,
            recheck=still_stopped,
            checks=(Check(PreflightStage.JAILS, check_jail_mounts),),
            plan=(PlanLines(PlanPart.SKIPPED, skip_plan),),
            metrics=(Metric("consoles_stopped", "consoles stopped"),))

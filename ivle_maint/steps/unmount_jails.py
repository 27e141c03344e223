"""unmount-jails: no user jail pins the old jail template.

Nothing undoes it: jails are mounted again on demand.  So the after-phase
re-checks (still_unmounted) and unmounts any mounted since.
"""

from __future__ import annotations

from .. import release_needs
from ..config import Settings
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
from ..jails.mounts import list_jail_mounts, unmount_jails_for
from ..jails.users import check_table_logins


def unmount_jails(ctx: UpgradeContext) -> Outcome:
    why = release_needs.of(ctx).stays_up
    if why:
        return release_needs.skipped(why)
    result = unmount_jails_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"jails_unmounted": len(result.unmounted)})


def still_unmounted(ctx: UpgradeContext) -> str:
    """Jail mounts made since the step ("" if none)."""
    if release_needs.was_skipped(ctx, STEP.name):
        return ""  # the site stays up: jails stay mounted
    found = list_jail_mounts(checked_mounts(ctx.settings.ivle_conf()))
    if not found:
        return ""
    return f"{len(found)} jail mounts mounted again since the before-phase " \
           f"(first: {found[0].mountpoint})"


def programs(settings: Settings) -> list[str]:
    """IVLE's ivle-mountallusers -u, when the settings ask for it."""
    run = settings["jails"]["run_mountallusers"]
    return [settings["commands"]["mountallusers"]] if run else []


def check_logins(ctx: UpgradeContext) -> None:
    """With [jails] run_mountallusers: every login ivle-mountallusers -u
    walks is a plain name (gates/names.py), proved while the site is up."""
    if ctx.settings["jails"]["run_mountallusers"] and not release_needs.of(ctx).stays_up:
        check_table_logins(ctx.settings, ctx.reporter,
                           f"{ctx.settings['commands']['mountallusers']} -u")


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, release_needs.of(ctx).stays_up)


STEP = Step("unmount-jails", "unmount user jails", SLAVE, BEFORE, unmount_jails,
            recheck=still_unmounted, programs=programs,
            checks=(Check(PreflightStage.JAILS, check_logins),),
            plan=(PlanLines(PlanPart.SKIPPED, skip_plan),),
            metrics=(Metric("jails_unmounted", "jail mounts unmounted"),))

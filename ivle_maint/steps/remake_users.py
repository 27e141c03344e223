"""remake-users: every user's jail is made again from the new template."""

from __future__ import annotations

from .. import release_needs
from ..context import (
    AFTER,
    MASTER,
    Check,
    Metric,
    Outcome,
    PlanLines,
    PlanPart,
    PreflightStage,
    Step,
    UpgradeContext,
)
from ..jails.users import check_logins, remake_user_jails
from .rebuild_jail import WAIT, skip_why, with_wait


def remake_users(ctx: UpgradeContext) -> Outcome:
    why = skip_why(ctx)  # the users' jails are made from the template's inputs
    if why:
        return release_needs.skipped(why)
    waited = WAIT.wait(ctx, STEP.name)
    result = remake_user_jails(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    return with_wait(waited, Outcome(result.summary, result.metrics))


def check_users(ctx: UpgradeContext) -> None:
    """Every login the step would pass to ivle-remakeuser is a plain name
    (gates/names.py), proved before the web server stops, not after."""
    if not skip_why(ctx):
        check_logins(ctx.settings, ctx.reporter, ctx.ivle_conf)


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, skip_why(ctx))


STEP = Step("remake-users", "rebuild user jails", MASTER, AFTER, remake_users,
            programs=lambda settings: [settings["commands"]["remakeuser"]],
            checks=(Check(PreflightStage.JAIL_TREE, check_users),),
            plan=(PlanLines(PlanPart.SKIPPED, skip_plan),),
            metrics=(Metric("rebuilt", "user jails rebuilt"),), cluster_wait=WAIT)

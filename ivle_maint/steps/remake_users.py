"""remake-users: every user's jail is made again from the new template."""

from __future__ import annotations

from ..context import AFTER, MASTER, Metric, Outcome, Step, UpgradeContext
from ..jails.users import remake_user_jails
from .rebuild_jail import WAIT, with_wait


def remake_users(ctx: UpgradeContext) -> Outcome:
    waited = WAIT.wait(ctx, STEP.name)
    result = remake_user_jails(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    return with_wait(waited, Outcome(result.summary, result.metrics))


STEP = Step("remake-users", "rebuild user jails", MASTER, AFTER, remake_users,
            programs=lambda settings: [settings["commands"]["remakeuser"]],
            metrics=(Metric("rebuilt", "user jails rebuilt"),), cluster_wait=WAIT)

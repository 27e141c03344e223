"""remake-users: every user's jail is made again from the new template."""

from __future__ import annotations

from ..cluster.waits import wait_for_jails_free
from ..context import AFTER, MASTER, Outcome, Step, UpgradeContext
from ..jails.users import remake_user_jails
from .rebuild_jail import with_wait


def remake_users(ctx: UpgradeContext) -> Outcome:
    waited = wait_for_jails_free(ctx, STEP.name)
    result = remake_user_jails(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    return with_wait(waited, Outcome(result.summary, result.metrics))


STEP = Step("remake-users", "rebuild user jails", MASTER, AFTER, remake_users)

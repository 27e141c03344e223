"""rebuild-jail: the jail template gets the new code (ivle-buildjail)."""

from __future__ import annotations

from ..cluster.waits import wait_for_jails_free
from ..context import AFTER, MASTER, Outcome, Step, UpgradeContext
from ..jails.template import rebuild_template


def rebuild_jail(ctx: UpgradeContext) -> Outcome:
    # The tree is shared with the slaves (NFS): none may have a jail of it
    # mounted, or a console running in one, while it is rewritten.
    waited = wait_for_jails_free(ctx, STEP.name)
    result = rebuild_template(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    return with_wait(waited, Outcome(result.summary, result.metrics))


def with_wait(waited: str, outcome: Outcome) -> Outcome:
    if waited:
        outcome.summary = f"{waited}; {outcome.summary}"
    return outcome


STEP = Step("rebuild-jail", "rebuild the jail", MASTER, AFTER, rebuild_jail)

"""rebuild-jail: the jail template gets the new code (ivle-buildjail)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..cluster.waits import wait_for_jails_free
from ..context import (
    AFTER,
    MASTER,
    Check,
    ClusterWait,
    Metric,
    Outcome,
    PreflightStage,
    Step,
    SummaryPart,
    UpgradeContext,
)
from ..errors import MaintError
from ..gates.rewrite import existing_parent, prove_writable
from ..jails.template import rebuild_template
from . import migrate


def rebuild_jail(ctx: UpgradeContext) -> Outcome:
    # The tree is shared with the slaves (NFS): none may have a jail of it
    # mounted, or a console running in one, while it is rewritten.
    waited = WAIT.wait(ctx, STEP.name)
    result = rebuild_template(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    return with_wait(waited, Outcome(result.summary, result.metrics))


def with_wait(waited: str, outcome: Outcome) -> Outcome:
    if waited:
        outcome.summary = f"{waited}; {outcome.summary}"
    return outcome


def check_jail_tree(ctx: UpgradeContext) -> None:
    """rebuild-jail and remake-users rewrite the jail tree: really writable."""
    src = ctx.ivle_conf.jail_src
    try:
        prove_writable(src)
    except OSError as exc:
        raise MaintError(
            f"{existing_parent(src)}: the jails cannot be rebuilt there ({exc.strerror}): "
            "make it writable"
        ) from None


def _label_alone(value: Any, metrics: Mapping[str, Any]) -> str:
    return ""


# The tree is shared with the slaves: remake-users waits the same way.
WAIT = ClusterWait(wait_for_jails_free)
STEP = Step("rebuild-jail", "rebuild the jail", MASTER, AFTER, rebuild_jail,
            programs=lambda settings: [settings["commands"]["buildjail"]],
            checks=(Check(PreflightStage.JAIL_TREE, check_jail_tree),),
            metrics=(Metric("", "jail template rebuilt", SummaryPart.DONE, _label_alone,
                            when_done=True),),
            cluster_wait=WAIT, alongside=(migrate.STEP,))

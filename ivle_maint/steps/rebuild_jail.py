"""rebuild-jail: the jail template gets the new code (ivle-buildjail)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import release_needs
from ..cluster.waits import wait_for_jails_free
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
from ..errors import MaintError
from ..gates.rewrite import existing_parent, prove_replaceable, prove_writable
from ..jails.template import (
    forget_inputs,
    inputs_record_path,
    rebuild_template,
    record_inputs,
)
from ..rollback import keep, restore
from . import migrate


def skip_why(ctx: UpgradeContext) -> str:
    """Why the jail needs no rebuild ("" when it does); remake-users asks too."""
    needs = release_needs.of(ctx)
    return "" if needs.jail else needs.reason(release_needs.JAIL)


def rebuild_jail(ctx: UpgradeContext) -> Outcome:
    why = skip_why(ctx)
    if why:
        return release_needs.skipped(why)
    # The tree is shared with the slaves (NFS): none may have a jail of it
    # mounted, or a console running in one, while it is rewritten.
    waited = WAIT.wait(ctx, STEP.name)
    forget_inputs(ctx.settings)
    put_back = restore.template(ctx) if ctx.rollback is not None else None
    if put_back is not None:
        return with_wait(waited, put_back)
    keep.template_aside(ctx)  # the restore point's, before the rebuild replaces files
    result = rebuild_template(ctx.settings, ctx.reporter, ivle_conf=ctx.ivle_conf)
    inputs = release_needs.built_inputs(ctx)
    if inputs:  # the next release with the same inputs needs no rebuild
        record_inputs(ctx.settings, inputs)
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


def check_inputs_record(ctx: UpgradeContext) -> None:
    prove_replaceable(inputs_record_path(ctx.settings), "the record of the jail's inputs")


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, skip_why(ctx))


def _label_alone(value: Any, metrics: Mapping[str, Any]) -> str | None:
    return None if release_needs.SKIPPED in metrics else ""


# The tree is shared with the slaves: remake-users waits the same way.
WAIT = ClusterWait(wait_for_jails_free)
STEP = Step("rebuild-jail", "rebuild the jail", MASTER, AFTER, rebuild_jail,
            programs=lambda settings: [settings["commands"]["buildjail"]],
            checks=(Check(PreflightStage.JAIL_TREE, check_jail_tree),
                    Check(PreflightStage.STATE_FILES, check_inputs_record)),
            plan=(PlanLines(PlanPart.SKIPPED, skip_plan),),
            metrics=(Metric("", "jail template rebuilt", SummaryPart.DONE, _label_alone,
                            when_done=True),),
            cluster_wait=WAIT, alongside=(migrate.STEP,))

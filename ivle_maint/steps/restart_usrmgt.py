"""restart-usrmgt: the user management server runs the new code.

It needs the new code and the migrated schema, nothing of the user jails'
remake: IVLE's procedure leaves the old server running through
ivle-remakeuser, and with the web server down nobody asks it for a new
jail meanwhile.  So it restarts while the user jails are remade
(Step.alongside), not after them, and the web server starts after both.
"""

from __future__ import annotations

from .. import release_needs
from ..context import (
    AFTER,
    MASTER,
    Check,
    Outcome,
    PlanLines,
    PlanPart,
    PreflightStage,
    Step,
    UpgradeContext,
)
from ..services import early_calls
from ..services.outcome import service_outcome
from . import remake_users


def skip_why(ctx: UpgradeContext) -> str:
    """Why not ("" to restart): the site stayed up and usrmgt's code is the same."""
    needs = release_needs.of(ctx)
    return "" if needs.outage or needs.usrmgt else needs.reason(release_needs.USRMGT)


def restart_usrmgt(ctx: UpgradeContext) -> Outcome:
    why = skip_why(ctx)
    if why:
        return release_needs.skipped(why)
    return service_outcome(ctx, "restart", "usrmgt")


def check_new_postinst(ctx: UpgradeContext) -> None:
    early_calls.check(ctx, release_needs.new_postinst(ctx), "usrmgt")


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, skip_why(ctx))


STEP = Step("restart-usrmgt", "restart the user management server", MASTER, AFTER,
            restart_usrmgt, serving=True, plan=(PlanLines(PlanPart.SKIPPED, skip_plan),),
            checks=(Check(PreflightStage.WEB, check_new_postinst),),
            alongside=(remake_users.STEP,))

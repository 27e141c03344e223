"""restart-usrmgt: the user management server runs the new code."""

from __future__ import annotations

from ..context import AFTER, MASTER, Outcome, Step, UpgradeContext
from ..services.outcome import service_outcome


def restart_usrmgt(ctx: UpgradeContext) -> Outcome:
    return service_outcome(ctx, "restart", "usrmgt")


STEP = Step("restart-usrmgt", "restart the user management server", MASTER, AFTER,
            restart_usrmgt, serving=True)

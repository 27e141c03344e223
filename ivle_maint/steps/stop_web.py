"""stop-web: no request reaches IVLE's web code while it changes."""

from __future__ import annotations

from ..context import BEFORE, SLAVE, Outcome, Step, UpgradeContext
from . import maintenance, start_web
from .service_outcome import service_outcome


def stop_web(ctx: UpgradeContext) -> Outcome:
    if maintenance.mode(ctx.settings, ctx.during_upgrade) == maintenance.MAINTENANCE:
        return Outcome(maintenance.enter(ctx.settings, ctx.reporter), {"maintenance": True})
    return service_outcome(ctx, "stop", "web")


# Abandoned, the upgrade starts it again (begun counts: a run killed
# inside the stop may have stopped it).
STEP = Step(start_web.STOP_WEB, "stop the web server", SLAVE, BEFORE, stop_web,
            undo=start_web.STEP, serving=False)

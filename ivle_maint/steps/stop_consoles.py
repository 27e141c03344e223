"""stop-consoles: no python-console runs the old code in a jail.

Nothing undoes it: consoles come back on demand.
"""

from __future__ import annotations

from ..context import BEFORE, SLAVE, Outcome, Step, UpgradeContext
from .consoles import stop_consoles_for


def stop_consoles(ctx: UpgradeContext) -> Outcome:
    result = stop_consoles_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"consoles_stopped": result.count, "killed": result.killed})


STEP = Step("stop-consoles", "stop python-console processes", SLAVE, BEFORE, stop_consoles)

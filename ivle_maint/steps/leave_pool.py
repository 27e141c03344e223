"""leave-pool: in a roll, this slave leaves the balancer's pool first.

Only when the release rolls (roll/decision.py): the slave waits for a
roll slot ([cluster] roll_batch slaves out at once), then answers the
balancer 'drain' and waits until the balancer has seen it (pool/switch.py):
no new session reaches it, and stop-web's graceful stop lets the requests
in flight finish.  Otherwise skipped, saying why: IVLE's procedure.
"""

from __future__ import annotations

from .. import release_needs
from ..context import BEFORE, SLAVE, Check, Outcome, PreflightStage, Step, UpgradeContext
from ..gates import clock
from ..pool import switch
from ..roll import decision, slot
from . import join_pool


def leave_pool(ctx: UpgradeContext) -> Outcome:
    choice = decision.attach(ctx)
    if not choice.rolling:
        return release_needs.skipped(f"the release does not roll ({choice.why})")
    waited = slot.take(ctx, STEP.name)
    # Out of the pool from here: the wait for a slot was spent serving in it.
    since = clock.reading()
    switched = switch.drain(ctx.settings)
    return Outcome(f"{waited}; out of the pool (answers drain); {switched.balancer()}",
                   {"drained": True, "rolls": choice.why, join_pool.DRAINED_WALL: since.wall,
                    join_pool.DRAINED_MONO: since.mono})


STEP = Step("leave-pool", "leave the balancer's pool (a roll)", SLAVE, BEFORE, leave_pool,
            undo=join_pool.STEP,
            checks=(Check(PreflightStage.CLUSTER, decision.check_roll),))

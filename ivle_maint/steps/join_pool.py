"""join-pool: in a roll, this slave goes back into the balancer's pool last.

Only after leave-pool took it out.  The readiness check asks the web
server, started by start-web, for a real page of IVLE carrying the media
version ([pool] ready_url, pool/readiness.py); only then does the slave
answer 'ready VERSION' and wait until the balancer has seen it.  Then its
roll slot goes to the next slave.  A slave that fails the check stays
out of the pool and keeps its slot: the roll stops, the others serve.

Abandoned after leave-pool began, the upgrade runs this step after
start-web gave the old code back: the slave rejoins on OLD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import release_needs
from ..context import AFTER, SLAVE, Metric, Outcome, Step, SummaryPart, UpgradeContext
from ..gates import clock
from ..pool import switch
from ..roll import slot

if TYPE_CHECKING:
    from ..journal import StepRecord

# leave-pool's metrics: when it answered the balancer drain (both clocks).
DRAINED_WALL, DRAINED_MONO = "drained_wall", "drained_mono"


def join_pool(ctx: UpgradeContext) -> Outcome:
    journal = ctx.journal
    # The step this one undoes (leave-pool): begun, not skipped.
    leave = next((s.name for s in ctx.steps if s.undo is not None and s.undo.name == STEP.name),
                 None)
    record = journal.steps.get(leave) if journal is not None and leave else None
    if leave is None or record is None or release_needs.was_skipped(ctx, leave):
        return release_needs.skipped("this slave did not leave the pool (no roll)")
    version = ctx.old if journal is not None and journal.is_aborting else ctx.new
    switched = switch.ready(ctx.settings, version)
    slot.give_back(ctx)
    out = clock.elapsed(drained_since(record), clock.reading())
    metrics = {"out_of_pool": out} if out is not None else {}
    took = f"; out of the pool {out:.1f}s" if out is not None else ""
    return Outcome(f"back in the pool: {switched.answer}; {switched.balancer()}{took}", metrics)


def drained_since(leave: StepRecord) -> clock.Reading:
    """When leave-pool answered drain: not its start, since the wait for a
    roll slot before it was spent in the pool, serving."""
    wall, mono = leave.metrics.get(DRAINED_WALL), leave.metrics.get(DRAINED_MONO)
    if isinstance(wall, float) and isinstance(mono, float | None):
        return clock.Reading(wall, mono, leave.boot)
    return leave.start_reading()  # recorded before leave-pool said when


def _seconds(value: object, metrics: object) -> str | None:
    return None if not isinstance(value, int | float) else f"{value:.1f}s"


STEP = Step("join-pool", "rejoin the balancer's pool, once ready (a roll)", SLAVE, AFTER,
            join_pool, serving=None,
            metrics=(Metric("out_of_pool", "out of the balancer's pool", SummaryPart.DONE,
                            _seconds, when_done=True),))

"""A roll slot: at most [cluster] roll_batch slaves out of the pool at once.

The slots are rows of ivle_maint_roll_slots (cluster/roll.py), taken under
an advisory lock so two slaves never both take the last one.  A slave
waits for a free slot up to [cluster] master_timeout (the slaves before
it each wait for the master's migrations too), then fails with nothing
stopped, naming the slaves that hold the slots.  A slave whose upgrade
fails keeps its slot: the roll stops there, the others keep serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..cluster.roll import release_slot, take_slot
from ..cluster.waits import Pending, TimedOut, poll
from ..errors import MaintError
from ..gates.text import ivle_maint

if TYPE_CHECKING:
    from ..context import UpgradeContext


def take(ctx: UpgradeContext, step: str) -> str:
    """Wait for a slot and take it (again, on a rerun); what was waited for."""
    presence = ctx.cluster
    assert presence is not None, "a roll is decided only in a cluster"
    me, batch = presence.name, int(ctx.settings["cluster"]["roll_batch"])

    def check(conn: Any) -> Pending | None:
        slot = take_slot(conn, target=ctx.new, node=me, batch=batch)
        if slot.taken:
            return None
        return Pending(" ".join(slot.holders), f"out of the pool now: {', '.join(slot.holders)} "
                       f"([cluster] roll_batch = {batch})")

    timeout = float(ctx.settings["cluster"]["master_timeout"])
    try:
        waited = poll(ctx, check, step=step, timeout=timeout, label="a roll slot")
    except TimedOut as exc:
        raise MaintError(
            f"no roll slot after {timeout:g}s ([cluster] master_timeout), nothing stopped: "
            f"{exc.pending.text}; a slave whose upgrade failed keeps its slot until it is "
            f"fixed ({ivle_maint('cluster', 'status')} says why)", resume=ctx.resume) from None
    return f"roll slot taken (waited {waited:.1f}s)"


def give_back(ctx: UpgradeContext) -> None:
    """The slot goes to the next slave (once this one serves again)."""
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        return
    presence.query(lambda conn: release_slot(conn, target=ctx.new, node=presence.name))

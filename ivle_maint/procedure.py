"""IVLE's upgrade procedure: its steps in order, and the runner that walks them.

Each step is one module, ivle_maint/steps/<name>.py: its name, title, the
role that runs it, its phase (BEFORE while the old code is still installed,
dpkg's preinst; AFTER once the new code is in place, postinst), what undoes
it, the function that does it and what it adds to the preflight, the
plan and the summary (context.Step).  Loading this module loads every step
and what the steps use, so nothing is imported once a step has begun.
runner.Procedure walks them with the journal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .context import (
    AFTER,
    BEFORE,
    BOTH,
    MASTER,
    SLAVE,
    Outcome,
    Step,
    run_groups,
    select_steps,
)
from .runner import Observer, Procedure
from .steps import (
    baseline,
    join_pool,
    leave_pool,
    media_version,
    migrate,
    rebuild_jail,
    remake_users,
    restart_usrmgt,
    start_web,
    stop_consoles,
    stop_web,
    unmount_jails,
)

__all__ = [
    "AFTER",
    "BEFORE",
    "BOTH",
    "MASTER",
    "SLAVE",
    "STEPS",
    "Observer",
    "Outcome",
    "Procedure",
    "Step",
    "run_groups",
    "steps_for",
]

# IVLE's order (its doc/man/upgrade.rst); the code changes between the phases.
# A roll (roll/choice.py) wraps a slave's in leave-pool and join-pool.
# rebuild-jail needs nothing of migrate, nor restart-usrmgt of remake-users
# (Step.alongside): each pair runs at once.  usrmgt reads no [media]
# version, so its restart comes before the media version's change.
STEPS: tuple[Step, ...] = (
    leave_pool.STEP,
    stop_web.STEP,
    stop_consoles.STEP,
    unmount_jails.STEP,
    baseline.STEP,
    migrate.STEP,
    rebuild_jail.STEP,
    remake_users.STEP,
    restart_usrmgt.STEP,
    media_version.STEP,
    start_web.STEP,
    join_pool.STEP,
)


def steps_for(role: str, phases: Iterable[str] = (BEFORE, AFTER),
              steps: Sequence[Step] = STEPS) -> list[Step]:
    """This node's steps, in order, for the given phases."""
    return select_steps(role, phases, steps)



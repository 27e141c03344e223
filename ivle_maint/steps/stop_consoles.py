"""stop-consoles: no python-console runs the old code in a jail.

Nothing undoes it: consoles come back on demand.  So the after-phase
re-checks (still_stopped) and stops any that started since.
"""

from __future__ import annotations

from ..consoles.jail_processes import list_consoles, stop_consoles_for
from ..context import BEFORE, SLAVE, Outcome, Step, UpgradeContext
from ..jaildir import check as checked_mounts


def stop_consoles(ctx: UpgradeContext) -> Outcome:
    result = stop_consoles_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"consoles_stopped": result.count, "killed": result.killed})


def still_stopped(ctx: UpgradeContext) -> str:
    """Processes in the jails again since the step ("" if none)."""
    ivle = ctx.settings.ivle_conf()
    found = list_consoles(checked_mounts(ivle), share=ivle.share)
    if not found:
        return ""
    return f"{len(found)} processes in users' jails since the before-phase " \
           f"(first: {found[0].describe()})"


STEP = Step("stop-consoles", "stop python-console processes", SLAVE, BEFORE, stop_consoles,
            recheck=still_stopped)

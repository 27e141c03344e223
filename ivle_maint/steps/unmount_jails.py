"""unmount-jails: no user jail pins the old jail template.

Nothing undoes it: jails are mounted again on demand.
"""

from __future__ import annotations

from ..context import BEFORE, SLAVE, Outcome, Step, UpgradeContext
from .mounts import unmount_jails_for


def unmount_jails(ctx: UpgradeContext) -> Outcome:
    result = unmount_jails_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"jails_unmounted": len(result.unmounted)})


STEP = Step("unmount-jails", "unmount user jails", SLAVE, BEFORE, unmount_jails)

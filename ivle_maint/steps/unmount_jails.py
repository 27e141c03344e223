"""unmount-jails: no user jail pins the old jail template.

Nothing undoes it: jails are mounted again on demand.  So the after-phase
re-checks (still_unmounted) and unmounts any mounted since.
"""

from __future__ import annotations

from ..config import Settings
from ..context import BEFORE, SLAVE, Metric, Outcome, Step, UpgradeContext
from ..jaildir import check as checked_mounts
from ..jails.mounts import list_jail_mounts, unmount_jails_for


def unmount_jails(ctx: UpgradeContext) -> Outcome:
    result = unmount_jails_for(ctx.settings, ctx.reporter)
    return Outcome(result.summary, {"jails_unmounted": len(result.unmounted)})


def still_unmounted(ctx: UpgradeContext) -> str:
    """Jail mounts made since the step ("" if none)."""
    found = list_jail_mounts(checked_mounts(ctx.settings.ivle_conf()))
    if not found:
        return ""
    return f"{len(found)} jail mounts mounted again since the before-phase " \
           f"(first: {found[0].mountpoint})"


def programs(settings: Settings) -> list[str]:
    """IVLE's ivle-mountallusers -u, when the settings ask for it."""
    run = settings["jails"]["run_mountallusers"]
    return [settings["commands"]["mountallusers"]] if run else []


STEP = Step("unmount-jails", "unmount user jails", SLAVE, BEFORE, unmount_jails,
            recheck=still_unmounted, programs=programs,
            metrics=(Metric("jails_unmounted", "jail mounts unmounted"),))

"""What an action on IVLE's services did, as a step's Outcome."""

from __future__ import annotations

from ..context import Outcome, UpgradeContext
from .init_scripts import run_action


def service_outcome(ctx: UpgradeContext, action: str, which: str) -> Outcome:
    results = run_action(ctx.settings, ctx.reporter, action, which)
    return Outcome(
        "; ".join(r.message for r in results),
        {r.service: f"{r.outcome}:{r.state}" for r in results},
    )

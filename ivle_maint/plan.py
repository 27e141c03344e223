"""`ivle-maint plan`: what this node would do for OLD -> NEW; changes nothing.

Each step says its own lines (Step.plan, Step.cluster_wait); this module
puts them in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .cluster.admin import read_status
from .cluster.presence import coordinated
from .errors import MaintError
from .procedure import STEPS, run_groups, steps_for
from .roll import decision as roll_decision
from .rollback import point as restore_points

if TYPE_CHECKING:
    from .context import Step, UpgradeContext


def _cluster_lines(ctx: UpgradeContext, steps: Sequence[Step]) -> list[str]:
    mode = ctx.settings["cluster"]["coordinate"]
    if not coordinated(ctx.settings):
        return [f"cluster: not coordinated ([cluster] coordinate = {mode})"]
    lines = [f"cluster: coordinated through ivle_maint_nodes ([cluster] coordinate = {mode})"]
    try:
        # Other nodes' rows: this node's own is not refreshed (a plan changes nothing).
        status = read_status(ctx.settings, ctx.reporter, own_row=False)
    except MaintError as exc:
        return [*lines, f"  cannot read the cluster table: {exc}"]
    for step in steps:
        wait = step.cluster_wait
        if wait is not None and wait.plan is not None:
            lines.append(wait.plan(ctx, status.nodes))
    return [*lines, roll_decision.plan_line(ctx, status.nodes)]


def _beside(step: Step, group: Sequence[Step]) -> str:
    others = [other.name for other in group if other is not step]
    return f" (at the same time as {', '.join(others)})" if others else ""


def describe(ctx: UpgradeContext, migrations_source: str | None = None,
             steps: Sequence[Step] = STEPS) -> list[str]:
    """Lines for a person: role, this node's STEPS in order (procedure.STEPS),
    services, then what each step says of itself, part by part (PlanPart).

    migrations_source: what to call ctx.new_migrations (a temporary copy of
    the new package's manifest) in the output.
    """
    settings = ctx.settings
    role = settings.role
    services = settings["services"]
    mine = steps_for(role, steps=steps)
    point = restore_points.attach(ctx) if ctx.old else None
    what = f"rollback to the restore point of {point.upgrade}" if point else "upgrade"
    lines = [
        f"{what} {ctx.old} -> {ctx.new} on {settings.node_name} (role: {role})",
        f"services: web server {services['web']!r}, user management {services['usrmgt']!r}",
        "steps:",
    ]
    for group in run_groups(mine):
        lines += [f"  {s.phase:6} {s.name:15} {s.title}" + _beside(s, group) for s in group]
    parts = sorted({p.part for s in mine for p in s.plan})
    for part in parts:
        for step in mine:
            for said in step.plan:
                if said.part == part:
                    lines += said.lines(ctx, migrations_source)
    lines += _cluster_lines(ctx, mine)
    return lines

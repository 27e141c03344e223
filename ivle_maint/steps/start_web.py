"""start-web: the web server serves the new code (or, abandoning, the old).

The only step that lifts the schema hold (gates/schema_hold.py): once
the master's migrations are in (or, abandoning, the old code is back),
the schema and the code agree, and only then does the web server start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import release_needs
from ..cluster.waits import master_plan_line, wait_for_master
from ..context import (
    AFTER,
    SLAVE,
    Check,
    ClusterWait,
    Outcome,
    PreflightStage,
    Step,
    UpgradeContext,
)
from ..gates import schema_hold
from ..gates.rewrite import prove_replaceable
from ..journal import Journal
from ..services import early_calls
from ..services.init_scripts import RUNNING, control_from_settings
from ..services.maintenance_page import leave
from ..services.outcome import service_outcome


def start_web(ctx: UpgradeContext) -> Outcome:
    # New code never serves on a schema the master has not migrated yet, nor
    # before the master has rebuilt the jail tree the slaves share with it.
    waited = WAIT.wait(ctx, STEP.name)
    journal = ctx.journal or _journal(ctx)
    released, other = schema_hold.release(ctx.settings, journal)
    if other is not None and journal is not None and journal.is_aborting:
        # Abandoned, this upgrade gives back the site as it found it: down,
        # for the one it carried on, whose start-web (or abandonment) starts it.
        name = ctx.settings["services"]["web"]
        return Outcome(f"{released}; {name} stays down: {other.describe()}",
                       {"hold": released, "held_for": f"{other.old} -> {other.new}"})
    left = leave(ctx.settings, ctx.reporter)  # the maintenance page, if stop-web put it up
    if left:
        left = f"{released}; {left}"
        return Outcome(f"{waited}; {left}" if waited else left, {"hold": released})
    if not release_needs.of(ctx).outage:
        outcome = _reload(ctx)
        outcome.summary = f"{released}; {outcome.summary}"
        outcome.metrics["hold"] = released
        return outcome
    late = started_by_hand(ctx) or stopped_partway(ctx)
    outcome = service_outcome(ctx, "restart" if late else "start", "web")
    if late:
        outcome.summary = f"{late}: restarted on the new code; {outcome.summary}"
    outcome.summary = f"{released}; {outcome.summary}"
    outcome.metrics["hold"] = released
    if waited:
        outcome.summary = f"{waited}; {outcome.summary}"
    return outcome


def _reload(ctx: UpgradeContext) -> Outcome:
    """The site stayed up (stop-web skipped): a graceful restart puts the new
    code in service without refusing a connection; a stopped server starts."""
    name = ctx.settings["services"]["web"]
    running = control_from_settings(ctx.settings, ctx.reporter).status(name) == RUNNING
    outcome = service_outcome(ctx, "reload" if running else "start", "web")
    outcome.metrics["reloaded"] = running
    return outcome


def _journal(ctx: UpgradeContext) -> Journal | None:
    """This upgrade's journal when the run has no cluster link to carry it."""
    path = Journal.file_for(ctx.settings.path_of("state"), ctx.old, ctx.new)
    return Journal.load(path) if path.exists() else None


def started_by_hand(ctx: UpgradeContext) -> str:
    """Why the running web server must be restarted, or "" if it need not.

    This upgrade stopped the web server (stop-web, the step this one undoes,
    begun: ctx.steps say which it is), yet it runs: it
    was started by hand since, before the new code and the migrations were
    both in place, so it may hold the old code or an old schema's view.
    Its start time cannot be read portably (init script, systemd), but it
    is later than stop-web's, so always before this check: restart it."""
    journal = ctx.journal
    stoppers = [s.name for s in ctx.steps if s.undo is not None and s.undo.name == STEP.name]
    if not ctx.code_is_new or journal is None or not any(n in journal.steps for n in stoppers):
        return ""  # an abort brings the old code back: a plain start
    name = ctx.settings["services"]["web"]
    if control_from_settings(ctx.settings, ctx.reporter).status(name) != RUNNING:
        return ""
    return f"{name} was started by hand after the before-phase stopped it"


def stopped_partway(ctx: UpgradeContext) -> str:
    """Why the running web server must be restarted, or "" if it need not:
    a run killed inside stop-web (begun, never done) may have left it on
    its way out (Apache's main process outlives a graceful stop's children
    by up to a second), so "running" is no promise it stays up; a restart
    is, whatever the killed stop left."""
    journal = ctx.journal
    stoppers = [s.name for s in ctx.steps if s.undo is not None and s.undo.name == STEP.name]
    if journal is None or not any(n in journal.steps and not journal.is_done(n)
                                  for n in stoppers):
        return ""
    name = ctx.settings["services"]["web"]
    if control_from_settings(ctx.settings, ctx.reporter).status(name) != RUNNING:
        return ""
    return f"{name} runs, but a stop of it was cut short"


def check_new_postinst(ctx: UpgradeContext) -> None:
    early_calls.check(ctx, release_needs.new_postinst(ctx), "web")


def check_release_record(ctx: UpgradeContext) -> None:
    prove_replaceable(ctx.settings.path_of("state") / schema_hold.RELEASE_FILE,
                      f"the schema hold's release ({STEP.name} writes it)")


def _wait_plan(ctx: UpgradeContext, rows: Sequence[Any]) -> str:
    return master_plan_line(ctx, rows, STEP.name)


WAIT = ClusterWait(wait_for_master, _wait_plan)
STEP = Step("start-web", "start the web server", SLAVE, AFTER, start_web, serving=True,
            checks=(Check(PreflightStage.WEB, check_new_postinst),
                    Check(PreflightStage.STATE_FILES, check_release_record)),
            cluster_wait=WAIT)

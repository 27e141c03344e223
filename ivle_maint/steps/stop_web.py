"""stop-web: no request reaches IVLE's web code while it changes.

The schema hold (gates/schema_hold.py) goes up first, where the system
honours it (a systemd drop-in that survives a reboot), so that nothing
starts the web server again until start-web releases it.  The after-phase
re-checks (still_holds) instead of trusting the before-phase: a web
server started since then is stopped again (or, in maintenance mode, an
IVLE site enabled again is disabled again).
"""

from __future__ import annotations

from .. import release_needs
from ..context import (
    BEFORE,
    SLAVE,
    Check,
    Outcome,
    PlanLines,
    PlanPart,
    PreflightStage,
    Step,
    UpgradeContext,
)
from ..gates import schema_hold
from ..services import first_requests, listeners, maintenance_page
from ..services.init_scripts import STOPPED, control_from_settings
from ..services.outcome import service_outcome
from . import start_web


def stop_web(ctx: UpgradeContext) -> Outcome:
    why = release_needs.of(ctx).stays_up  # decided here, first, in the before-phase
    if why:
        return release_needs.skipped(why)
    held = schema_hold.install(ctx.settings)
    if maintenance_page.mode(ctx.settings, ctx.during_upgrade) == maintenance_page.MAINTENANCE:
        entered = maintenance_page.enter(ctx.settings, ctx.reporter, _down())
        return Outcome(f"{held}; {entered}", {"maintenance": True, "hold": held})
    outcome = service_outcome(ctx, "stop", "web")
    outcome.summary = f"{held}; {outcome.summary}"
    outcome.metrics["hold"] = held
    return outcome


def still_stopped(ctx: UpgradeContext) -> str:
    """What undid stop-web since it was done ("" if nothing): checked again
    before the after-phase, which then redoes the step."""
    if release_needs.was_skipped(ctx, STEP.name):
        return ""  # the site stays up: nothing to redo
    settings = ctx.settings
    name = settings["services"]["web"]
    if schema_hold.holding(settings) is None:
        return ""  # start-web released the hold: the schema and the code agree
    if maintenance_page.in_maintenance(settings):
        enabled = schema_hold.enabled_sites(settings)
        return f"IVLE's sites enabled again: {', '.join(enabled)}" if enabled else ""
    if control_from_settings(settings, ctx.reporter).status(name) != STOPPED:
        return f"{name} was started again since the before-phase stopped it"
    return ""


def _down() -> tuple[str, str]:
    """The web server is down from this step to start-web (the Retry-After)."""
    return STEP.name, start_web.STEP.name


def check_maintenance(ctx: UpgradeContext) -> None:
    maintenance_page.preflight(ctx.settings, ctx.during_upgrade)


def warn_first_requests(ctx: UpgradeContext) -> None:
    """A warning, said before anything stops; never a refusal."""
    warning = first_requests.warning(ctx.settings)
    if warning:
        ctx.reporter.warn(warning)


def warn_unheld_listeners(ctx: UpgradeContext) -> None:
    """Stop mode: a graceful stop that cannot hold the web server's
    listening sockets (a container's root without CAP_NET_ADMIN) may reset
    a client's connection; said before anything stops, never a refusal."""
    if maintenance_page.mode(ctx.settings, ctx.during_upgrade) != maintenance_page.STOP:
        return  # maintenance mode reloads the web server: its sockets stay open
    why = listeners.why_not_here()
    if why:
        ctx.reporter.warn(f"{ctx.settings['services']['web']}: connections queued at its stop "
                          f"may be reset: listening sockets cannot be held ({why})")


def plan_lines(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    warning = first_requests.warning(ctx.settings)
    return [maintenance_page.plan_line(ctx.settings, ctx.during_upgrade, _down()),
            schema_hold.status_line(ctx.settings)] + ([f"warning: {warning}"] if warning else [])


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, release_needs.of(ctx).stays_up)


# Abandoned, the upgrade starts it again (begun counts: a run killed
# inside the stop may have stopped it).
STEP = Step("stop-web", "stop the web server", SLAVE, BEFORE, stop_web,
            undo=start_web.STEP, serving=False, recheck=still_stopped,
            checks=(Check(PreflightStage.WEB, check_maintenance),
                    Check(PreflightStage.WEB, warn_first_requests),
                    Check(PreflightStage.WEB, warn_unheld_listeners)),
            plan=(PlanLines(PlanPart.WEB, plan_lines), PlanLines(PlanPart.SKIPPED, skip_plan)))

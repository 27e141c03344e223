"""The seed's upgrade procedure as data, and the runner that walks it.

Each step names the role that runs it and the phase: BEFORE runs while the
old code is still installed (dpkg's preinst), AFTER once the new code is
in place (postinst).  The runner records every step in the journal, skips
steps already done (so a rerun continues where a failure stopped), and
when a BEFORE step fails, starts again what it had stopped, because dpkg
then keeps the old version and the site must come back on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import MaintError
from .journal import ABORTED, ABORTING, COMPLETE, IN_PROGRESS, Journal

log = logging.getLogger(__name__)

MASTER, SLAVE, BOTH = "master", "slave", "both"
BEFORE, AFTER = "before", "after"


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    role: str
    phase: str


# The seed's order (seed/upgrade-procedure.txt); the code changes between
# the two phases.
STEPS: tuple[Step, ...] = (
    Step("stop-web", "stop the web server", SLAVE, BEFORE),
    Step("stop-consoles", "stop python-console processes", SLAVE, BEFORE),
    Step("unmount-jails", "unmount user jails", SLAVE, BEFORE),
    Step("baseline", "record the migration baseline", MASTER, BEFORE),
    Step("migrate", "apply database migrations", MASTER, AFTER),
    Step("rebuild-jail", "rebuild the jail", MASTER, AFTER),
    Step("remake-users", "rebuild user jails", MASTER, AFTER),
    Step("media-version", "change the media version", SLAVE, AFTER),
    Step("restart-usrmgt", "restart the user management server", MASTER, AFTER),
    Step("start-web", "start the web server", SLAVE, AFTER),
)

# What undoes a BEFORE step when the upgrade is abandoned.  Unmounted jails
# and stopped consoles come back on demand, so only the web server needs it.
UNDO = {"stop-web": "start-web"}


def steps_for(role: str, phases: Iterable[str] = (BEFORE, AFTER)) -> list[Step]:
    """This node's steps, in order, for the given phases."""
    wanted = set(phases)
    return [s for s in STEPS if s.phase in wanted and role in (s.role, BOTH)]


@dataclass
class Outcome:
    """What a step did: one line for a person, numbers for the summary."""

    summary: str
    metrics: dict[str, Any] = field(default_factory=dict)


Action = Callable[[Any], Outcome]

# Told of every step's "begin", "done" and "failed", and of the run's "end"
# and "aborted" (step None): the cluster table follows the journal by it.
Observer = Callable[[str, "Step | None"], None]


def _no_observer(event: str, step: Step | None) -> None:
    pass


class Procedure:
    """Runs steps with the journal; `actions` maps step names to functions."""

    def __init__(self, ctx: Any, journal: Journal, actions: dict[str, Action],
                 observer: Observer | None = None) -> None:
        self.ctx = ctx
        self.journal = journal
        self.actions = actions
        self.reporter = ctx.reporter
        self.observe = observer or _no_observer

    def run(self, phases: Iterable[str]) -> None:
        phases = tuple(phases)
        if self.journal.state != IN_PROGRESS:
            self.journal.state = IN_PROGRESS
        for step in steps_for(self.journal.role, phases):
            if self.journal.is_done(step.name):
                self.reporter.info(f"{step.title}: already done")
                continue
            self._run_step(step)
        if AFTER in phases:
            self.journal.set_state(COMPLETE)
        self.observe("end", None)

    def _run_step(self, step: Step) -> None:
        self.reporter.info(f"{step.title} ...")
        self.journal.begin(step.name)
        self.observe("begin", step)
        started = time.monotonic()
        try:
            outcome = self.actions[step.name](self.ctx)
        except BaseException as exc:
            # Whatever went wrong, the person must learn how to resume.
            if not isinstance(exc, MaintError):
                log.exception("step %s crashed", step.name)
            reason = str(exc) or type(exc).__name__
            self.journal.fail(step.name, reason)
            self.observe("failed", step)
            # Abandoning makes sense only while the old code is in place.
            if step.phase == BEFORE and not getattr(self.ctx, "code_is_new", False):
                try:
                    self.abort()
                except BaseException as undo_exc:
                    if not isinstance(undo_exc, MaintError):
                        log.exception("abandoning the upgrade crashed")
                    why = str(undo_exc) or type(undo_exc).__name__
                    raise MaintError(
                        f"{step.title} failed: {reason}; giving the site back on the old "
                        f"code failed too: {why}",
                        resume="ivle-maint rerun  (finishes giving the site back)",
                    ) from exc
                raise MaintError(
                    f"{step.title} failed: {reason}; upgrade abandoned, services restored",
                    resume=self.journal.resume,
                ) from exc
            # A step's own resume (e.g. with the option it needs) beats the run's.
            resume = exc.resume if isinstance(exc, MaintError) and exc.resume else \
                self.journal.resume
            error = MaintError(f"{step.title} failed: {reason}", resume=resume)
            if isinstance(exc, MaintError):
                error.exit_status = exc.exit_status  # 75 stays "try again later"
            raise error from exc
        elapsed = time.monotonic() - started
        log.info("step %s took %.2fs: %s", step.name, elapsed, outcome.summary)
        self.journal.finish(step.name, outcome.summary, {**outcome.metrics, "seconds": elapsed})
        self.observe("done", step)
        self.reporter.info(f"{step.title}: {outcome.summary} ({elapsed:.1f}s)")

    def abort(self) -> list[str]:
        """Undo what the BEFORE phase changed; returns the undo steps run.

        The journal is written before each undo (state "aborting": a rerun
        finishes the abandonment, never the upgrade) and after it (the step
        it reversed is forgotten), so a run killed anywhere in between
        leaves a journal that says what is still owed.
        """
        undone = []
        self.journal.set_state(ABORTING)
        for done_step, undo in UNDO.items():
            # Begun counts: a run killed inside stop-web may have stopped it.
            if done_step in self.journal.steps and not self.journal.is_done(undo):
                outcome = self.actions[undo](self.ctx)
                self.journal.forget([done_step])
                self.reporter.info(f"abort: {undo}: {outcome.summary}")
                undone.append(undo)
        before = [s.name for s in STEPS if s.phase == BEFORE]
        self.journal.forget(before)
        self.journal.set_state(ABORTED)
        self.observe("aborted", None)
        return undone

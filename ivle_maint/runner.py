"""The runner that walks IVLE's upgrade procedure with the journal.

It records every step in the journal, skips steps already done (so a
rerun continues where a failure stopped), and when a BEFORE step fails,
runs what undoes the steps begun, because dpkg then keeps the old version
and the site must come back on it.  The steps are given (procedure.STEPS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

from .context import AFTER, BEFORE, RunEvent, Step, UpgradeContext, select_steps
from .errors import Interrupted, MaintError
from .gates import waits
from .journal import Journal, JournalState

log = logging.getLogger(__name__)


# Told of every step's begin, done and failed, and of the run's end and
# abort (step None): the cluster table follows the journal by it.
Observer = Callable[[RunEvent, "Step | None"], None]


def _no_observer(event: RunEvent, step: Step | None) -> None:
    pass


class Procedure:
    """Runs STEPS for one context with the journal."""

    def __init__(self, ctx: UpgradeContext, journal: Journal, steps: Sequence[Step],
                 observer: Observer | None = None) -> None:
        self.ctx = ctx
        self.journal = journal
        self.steps = tuple(steps)
        self.by_name = {s.name: s for s in self.steps}
        self.reporter = ctx.reporter
        self.observe = observer or _no_observer

    def run(self, phases: Iterable[str]) -> None:
        phases = tuple(phases)
        try:
            if not self.journal.is_in_progress:
                self.journal.set_state(JournalState.IN_PROGRESS)
            for step in select_steps(self.journal.role, phases, self.steps):
                waits.checkpoint()  # a signal a finalizer swallowed stops here
                if self.journal.is_done(step.name):
                    undone = self._undone_since(step, phases)
                    if not undone:
                        self.reporter.info(f"{step.title}: already done")
                        continue
                    self.reporter.warn(f"{step.title}: {undone}: doing it again")
                self._run_step(step)
            if AFTER in phases:
                self.journal.set_state(JournalState.COMPLETE)
            self.observe(RunEvent.END, None)
        except (KeyboardInterrupt, waits.Terminated) as exc:
            # Ctrl-C or SIGTERM, wherever it lands: never a failure (the
            # command exits 130 or 143), nothing undone; a rerun resumes.
            raise Interrupted(exc, resume=self.journal.resume) from exc

    def _undone_since(self, step: Step, phases: tuple[str, ...]) -> str:
        """The after-phase re-checks a BEFORE step's effect instead of trusting it."""
        if step.recheck is None or step.phase != BEFORE or AFTER not in phases \
                or not self.ctx.code_is_new:
            return ""
        return step.recheck(self.ctx)

    def _run_step(self, step: Step) -> None:
        self.reporter.info(f"{step.title} ...")
        try:
            with waits.deferred():  # a journal record is written whole
                self.journal.begin(step.name)
            self._run_begun(step)
        except (KeyboardInterrupt, waits.Terminated) as exc:
            if self.journal.is_running(step.name):  # not already journaled as failed
                with waits.deferred():
                    self.journal.interrupt(step.name, waits.describe(exc))
                self.observe(RunEvent.FAILED, step)
            raise

    def _run_begun(self, step: Step) -> None:
        self.observe(RunEvent.BEGIN, step)
        started = time.monotonic()
        try:
            outcome = step.run(self.ctx)
        except Exception as exc:
            interrupt = waits.received()
            if interrupt is not None:  # what the interruption caused: not a failure
                raise interrupt from exc
            self._failed(step, exc)
        elapsed = time.monotonic() - started
        log.info("step %s took %.2fs: %s", step.name, elapsed, outcome.summary)
        with waits.deferred():
            self.journal.finish(step.name, outcome.summary, {**outcome.metrics,
                                                             "seconds": elapsed})
        self.observe(RunEvent.DONE, step)
        self.reporter.info(f"{step.title}: {outcome.summary} ({elapsed:.1f}s)")

    def _failed(self, step: Step, exc: Exception) -> NoReturn:
        """Journal STEP's failure, give the site back if it still can be, and
        raise the one-line error that says how to resume."""
        # Whatever went wrong, the person must learn how to resume.
        if not isinstance(exc, MaintError):
            log.exception("step %s crashed", step.name)
        reason = str(exc) or type(exc).__name__
        self.journal.fail(step.name, reason)
        self.observe(RunEvent.FAILED, step)
        # Abandoning makes sense only while the old code is in place.
        if step.phase == BEFORE and not self.ctx.code_is_new:
            try:
                self.abort()
            except Exception as undo_exc:
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

    def abort(self) -> list[str]:
        """Undo what the BEFORE phase changed; returns the undo steps run.

        The journal is written before each undo (state ABORTING: a rerun
        finishes the abandonment, never the upgrade) and after it (the step
        it reversed is forgotten), so a run killed anywhere in between
        leaves a journal that says what is still owed.
        """
        undone: list[str] = []
        self.journal.set_state(JournalState.ABORTING)
        for done_step in self.steps:
            if done_step.phase != BEFORE or done_step.undo is None:
                continue
            undo = self.by_name[done_step.undo.name]
            # Begun counts: a run killed inside stop-web may have stopped it.
            if done_step.name in self.journal.steps and not self.journal.is_done(undo.name):
                outcome = undo.run(self.ctx)
                self.journal.forget([done_step.name])
                self.reporter.info(f"abort: {undo.name}: {outcome.summary}")
                undone.append(undo.name)
        before = [s.name for s in self.steps if s.phase == BEFORE]
        self.journal.forget(before)
        self.journal.set_state(JournalState.ABORTED)
        self.observe(RunEvent.ABORTED, None)
        return undone

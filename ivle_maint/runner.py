"""The runner that walks IVLE's upgrade procedure with the journal.

It records every step in the journal, skips steps already done (so a
rerun continues where a failure stopped), and when a BEFORE step fails,
runs what undoes the steps begun, because dpkg then keeps the old version
and the site must come back on it.  The steps are given (procedure.STEPS).

Steps that need nothing from each other (Step.alongside, context.run_groups)
run at the same time, each in a worker thread (children.Workers), while
the main thread alone writes their journal records, tells the observer
and takes the signals.  Each member is begun, done, failed or interrupted
in the journal on its own, so a rerun runs exactly the members not done.
A member that fails lets the others finish; then the first failure is
raised as a single step's is.  Ctrl-C or SIGTERM stops the others (their
commands are ended, their database statements cancelled), journals each
one still running as interrupted, and goes on as in any step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

from . import children, system
from .context import (
    AFTER,
    BEFORE,
    ClusterLink,
    Outcome,
    RunEvent,
    Step,
    UpgradeContext,
    run_groups,
    select_steps,
)
from .errors import Interrupted, MaintError
from .gates import waits
from .journal import Journal, JournalState

T = TypeVar("T")

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
        self._observer = observer or _no_observer
        # The cluster link has one connection: the observer (main thread)
        # and the steps' cluster waits (workers) use it one at a time.
        self._link_lock = threading.RLock()

    def observe(self, event: RunEvent, step: Step | None) -> None:
        with self._link_lock:
            self._observer(event, step)

    def run(self, phases: Iterable[str]) -> None:
        with system.steps_running():  # the site is down: no command's end waits on a poll
            self._run(tuple(phases))

    def _run(self, phases: tuple[str, ...]) -> None:
        try:
            if not self.journal.is_in_progress:
                self.journal.set_state(JournalState.IN_PROGRESS)
            for group in self._groups(phases):
                waits.checkpoint()  # a signal a finalizer swallowed stops here
                todo = [step for step in group if self._to_do(step, phases)]
                if len(todo) > 1:
                    self._run_group(todo)
                elif todo:
                    self._run_step(todo[0])
            if AFTER in phases:
                self.journal.set_state(JournalState.COMPLETE)
            self.observe(RunEvent.END, None)
        except (KeyboardInterrupt, waits.Terminated) as exc:
            # Ctrl-C or SIGTERM, wherever it lands: never a failure (the
            # command exits 130 or 143), nothing undone; a rerun resumes.
            raise Interrupted(exc, resume=self.journal.resume) from exc

    def _groups(self, phases: tuple[str, ...]) -> list[list[Step]]:
        mine = select_steps(self.journal.role, phases, self.steps)
        if switches_euid(self.ctx):
            # Connecting as another system user sets the effective uid of the
            # whole process, every thread: a step beside such a connection
            # could not write root's files (the journal).  One at a time.
            return [[step] for step in mine]
        return run_groups(mine)

    def _to_do(self, step: Step, phases: tuple[str, ...]) -> bool:
        """Is STEP to run: not done, or undone since (told either way)?"""
        if not self.journal.is_done(step.name):
            return True
        undone = self._undone_since(step, phases)
        if not undone:
            self.reporter.info(f"{step.title}: already done")
            return False
        self.reporter.warn(f"{step.title}: {undone}: doing it again")
        return True

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
        self._done(step, outcome, time.monotonic() - started)

    def _done(self, step: Step, outcome: Outcome, elapsed: float) -> None:
        log.info("step %s took %.2fs: %s", step.name, elapsed, outcome.summary)
        with waits.deferred():
            self.journal.finish(step.name, outcome.summary, {**outcome.metrics,
                                                             "seconds": elapsed})
        self.observe(RunEvent.DONE, step)
        self.reporter.info(f"{step.title}: {outcome.summary} ({elapsed:.1f}s)")

    # -- steps at the same time ----------------------------------------------

    def _run_group(self, group: list[Step]) -> None:
        """GROUP's steps at the same time; the first failure (in GROUP's order)
        raised once all have ended; an interruption journals each member still running."""
        try:
            for step in group:
                beside = ", ".join(other.title for other in group if other is not step)
                self.reporter.info(f"{step.title} ... (at the same time: {beside})")
                with waits.deferred():
                    self.journal.begin(step.name)
                self.observe(RunEvent.BEGIN, step)
            failures = self._run_members(group)
        except (KeyboardInterrupt, waits.Terminated) as exc:
            with waits.deferred():
                for step in group:
                    if self.journal.is_running(step.name):
                        self.journal.interrupt(step.name, waits.describe(exc))
                        self.observe(RunEvent.FAILED, step)
            raise
        if failures:
            # The first in the procedure's order, not in time: two members
            # that fail together (both given up waiting) name the same step
            # on every run, the one a sequential run would have stopped at.
            failures.sort(key=lambda failure: group.index(failure[0]))
            (first, error), others = failures[0], failures[1:]
            # The others' records came after it: the observer's last word
            # (the cluster row) is the failure.
            self.observe(RunEvent.FAILED, first)
            also = "".join(f"; {other.title} failed too: {_reason(why)}"
                           for other, why in others)
            self._give_up(first, error, also)

    def _run_members(self, group: list[Step]) -> list[tuple[Step, Exception]]:
        """Run GROUP's members in workers; journal each as it ends; the
        failures in the order they came."""
        by_name = {step.name: step for step in group}
        failures: list[tuple[Step, Exception]] = []
        link = getattr(self.ctx, "cluster", None)  # None: a context without one (tests)
        if link is not None:
            self.ctx.cluster = _SerialLink(link, self._link_lock, group, self.journal)
        try:
            with children.workers() as pool:
                try:
                    for step in group:
                        pool.start(step.name, _timed(step.run, self.ctx))
                    while pool.running:
                        pool.wait()  # where a signal lands, nothing taken
                        with waits.deferred():  # an outcome taken is journaled
                            self._member_ended(by_name, pool.take(), failures)
                except BaseException:
                    # Interrupted (or failing): the others stop, and what
                    # each finished before it stopped is journaled.
                    with waits.deferred():
                        pool.stop()
                        for ended in pool.join():
                            self._member_ended(by_name, ended, failures, stopping=True)
                    raise
        finally:
            if link is not None:
                self.ctx.cluster = link
        return failures

    def _member_ended(self, by_name: dict[str, Step], ended: children.Outcome,
                      failures: list[tuple[Step, Exception]], *, stopping: bool = False
                      ) -> None:
        name, value, exc = ended
        step = by_name[name]
        if exc is None:
            outcome, elapsed = value
            self._done(step, outcome, elapsed)
            return
        if stopping:  # its run was stopped: the caller journals it as interrupted
            return
        interrupt = waits.received()
        if interrupt is not None:  # what the interruption caused: not a failure
            raise interrupt from exc
        if not isinstance(exc, Exception):
            raise exc
        self._journal_failure(step, exc)
        failures.append((step, exc))

    def _failed(self, step: Step, exc: Exception) -> NoReturn:
        """Journal STEP's failure, give the site back if it still can be, and
        raise the one-line error that says how to resume."""
        self._journal_failure(step, exc)
        self._give_up(step, exc)

    def _journal_failure(self, step: Step, exc: Exception) -> None:
        # Whatever went wrong, the person must learn how to resume.
        if not isinstance(exc, MaintError):
            log.exception("step %s crashed", step.name, exc_info=exc)
        self.journal.fail(step.name, _reason(exc))
        self.observe(RunEvent.FAILED, step)

    def _give_up(self, step: Step, exc: Exception, also: str = "") -> NoReturn:
        """Give the site back if it still can be, and raise the one-line error
        that says how to resume (ALSO: what else failed beside STEP)."""
        reason = _reason(exc) + also
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
        with system.steps_running():
            return self._abort()

    def _abort(self) -> list[str]:
        undone: list[str] = []
        self.journal.set_state(JournalState.ABORTING)
        # Last done, first undone: a slave's web server starts again before
        # it goes back in the balancer's pool (join-pool asks it for a page).
        for done_step in reversed(self.steps):
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


def switches_euid(ctx: UpgradeContext) -> bool:
    """Does a step of this run connect as another system user (db/connect.py
    effective_user): [database] connect_as = postgres, or a rollback's
    [rollback] connect_as = postgres?"""
    settings = getattr(ctx, "settings", None)  # (test doubles may have none)
    if settings is None:
        return False
    if settings["database"]["connect_as"] == "postgres":
        return True
    return getattr(ctx, "rollback", None) is not None \
        and settings["rollback"]["connect_as"] == "postgres"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _timed(run: Callable[[UpgradeContext], Outcome], ctx: UpgradeContext
           ) -> Callable[[], tuple[Outcome, float]]:
    """RUN(ctx) in a worker: its outcome and how long it took."""
    def call() -> tuple[Outcome, float]:
        started = time.monotonic()
        outcome = run(ctx)
        return outcome, time.monotonic() - started
    return call


class _SerialLink:
    """ctx.cluster while steps run at the same time: the link's one database
    connection serves one thread at a time (the observer takes the lock too).
    The node's one row names one step: the first member still running."""

    def __init__(self, link: ClusterLink, lock: Any, group: Sequence[Step],
                 journal: Journal) -> None:
        self._link, self._lock, self._group, self._journal = link, lock, group, journal
        self.name, self.enabled, self.journal = link.name, link.enabled, link.journal

    @property
    def steps(self) -> Sequence[Step]:
        return self._link.steps

    def _serial(self, call: Callable[[], T]) -> T:
        with self._lock:
            return call()

    def connection(self, wait: float | None = None) -> Any:
        return self._serial(lambda: self._link.connection(wait))

    def query(self, look: Callable[[Any], T]) -> T:
        return self._serial(lambda: self._link.query(look))

    def waiting(self, step: str, note: str) -> None:
        first = next((s.name for s in self._group if self._journal.is_running(s.name)), step)
        said = note if first == step else f"{step} {note}"
        self._serial(lambda: self._link.waiting(first, said))

    def settle(self, timeout: float,
               serial: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        self._link.settle(timeout, self._serial)  # the lock only while it polls

    def preflight(self) -> None:
        self._serial(self._link.preflight)

    def refused(self) -> None:
        self._serial(self._link.refused)

"""The runner's own logic: order, roles, journal, resume and abort.

The step actions here are recorders: what is under test is how the runner
walks IVLE's steps, not the steps (tests/integration covers those).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from ivle_maint.errors import Interrupted, MaintError
from ivle_maint.gates.waits import Terminated, describe, exit_status
from ivle_maint.journal import (
    ABORTED,
    ABORTING,
    COMPLETE,
    DONE,
    FAILED,
    IN_PROGRESS,
    INTERRUPTED,
    Journal,
)
from ivle_maint.output import RecordingReporter
from ivle_maint.procedure import AFTER, BEFORE, STEPS, Outcome, Procedure, steps_for

IVLE_ORDER = [
    "stop-web", "stop-consoles", "unmount-jails", "baseline", "migrate",
    "rebuild-jail", "remake-users", "media-version", "restart-usrmgt", "start-web",
]


class Recorder:
    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or {}

    def actions(self) -> dict:
        def make(name: str):
            def act(ctx) -> Outcome:
                self.calls.append(name)
                if name in self.fail:
                    raise self.fail.pop(name)
                return Outcome(f"{name} ok", {"n": 1})
            return act
        return {s.name: make(s.name) for s in STEPS}

    def steps(self, actions: dict | None = None) -> list:
        """IVLE's steps, each doing its recorder instead of its work."""
        actions = actions or self.actions()
        return [replace(s, run=actions[s.name]) for s in STEPS]


def context():
    return SimpleNamespace(reporter=RecordingReporter(), code_is_new=False)


def journal(tmp_path: Path, role: str = "both") -> Journal:
    return Journal.open(tmp_path, "1.0", "1.1", role)


def run(tmp_path: Path, rec: Recorder, phases=(BEFORE, AFTER), role: str = "both") -> Journal:
    j = journal(tmp_path, role)
    Procedure(context(), j, rec.steps()).run(phases)
    return j


def test_steps_follow_the_seed_order_and_roles():
    assert [s.name for s in steps_for("both")] == IVLE_ORDER
    slave = [s.name for s in steps_for("slave")]
    master = [s.name for s in steps_for("master")]
    assert slave == ["stop-web", "stop-consoles", "unmount-jails", "media-version", "start-web"]
    assert master == ["baseline", "migrate", "rebuild-jail", "remake-users", "restart-usrmgt"]
    assert [s.name for s in steps_for("slave", [BEFORE])] == slave[:3]


def test_full_run_completes_and_records_every_step(tmp_path):
    rec = Recorder()
    j = run(tmp_path, rec)
    assert rec.calls == IVLE_ORDER
    assert j.state == COMPLETE
    reloaded = Journal.load(j.path)
    assert all(reloaded.steps[name].status == DONE for name in IVLE_ORDER)
    assert reloaded.steps["migrate"].metrics["n"] == 1


def test_after_phase_failure_resumes_at_the_failed_step(tmp_path):
    rec = Recorder(fail={"remake-users": MaintError("Failed to recreate jail for bob")})
    with pytest.raises(MaintError) as caught:
        run(tmp_path, rec)
    assert "rebuild user jails failed: Failed to recreate jail for bob" in str(caught.value)
    assert caught.value.resume == "ivle-maint rerun"
    j = Journal.load(Journal.file_for(tmp_path, "1.0", "1.1"))
    assert j.steps["remake-users"].status == FAILED
    assert j.steps["rebuild-jail"].status == DONE

    rec.calls.clear()
    j = run(tmp_path, rec)
    assert rec.calls == ["remake-users", "media-version", "restart-usrmgt", "start-web"]
    assert j.state == COMPLETE

    rec.calls.clear()
    run(tmp_path, rec)  # a finished upgrade run again: the runner skips all
    assert rec.calls == []


def test_unexpected_exception_still_names_the_resume_command(tmp_path):
    rec = Recorder(fail={"migrate": RuntimeError("boom")})
    with pytest.raises(MaintError) as caught:
        run(tmp_path, rec)
    assert caught.value.resume == "ivle-maint rerun"
    assert "boom" in str(caught.value)


def test_before_phase_failure_restarts_the_web_server_and_aborts(tmp_path):
    rec = Recorder(fail={"unmount-jails": MaintError("device busy")})
    with pytest.raises(MaintError, match="upgrade abandoned, services restored"):
        run(tmp_path, rec, phases=(BEFORE,))
    assert rec.calls == ["stop-web", "stop-consoles", "unmount-jails", "start-web"]
    j = Journal.load(Journal.file_for(tmp_path, "1.0", "1.1"))
    assert j.state == ABORTED
    assert not j.is_done("stop-web")  # a retried upgrade must stop it again

    rec.calls.clear()
    run(tmp_path, rec, phases=(BEFORE,))
    assert rec.calls == ["stop-web", "stop-consoles", "unmount-jails", "baseline"]


def test_abort_before_web_stopped_restarts_nothing(tmp_path):
    rec = Recorder(fail={"baseline": MaintError("boom")})
    with pytest.raises(MaintError):
        run(tmp_path, rec, phases=(BEFORE,), role="master")  # no stop-web begun
    assert rec.calls == ["baseline"]


def test_abort_after_a_begun_stop_web_starts_it_again(tmp_path):
    # A stop that failed (or a run killed inside it) may have stopped the
    # web server: the undo, a start, is a no-op if it still runs.
    rec = Recorder(fail={"stop-web": MaintError("cannot stop apache2")})
    with pytest.raises(MaintError):
        run(tmp_path, rec, phases=(BEFORE,))
    assert rec.calls == ["stop-web", "start-web"]


def test_journal_write_is_atomic_and_leaves_no_temporary(tmp_path):
    j = journal(tmp_path)
    j.begin("stop-web")
    j.finish("stop-web", "stopped", {})
    files = sorted(p.name for p in j.path.parent.iterdir())
    assert files == [j.path.name]
    assert j.path.stat().st_mode & 0o777 == 0o600


def test_abort_writes_the_journal_before_and_after_each_undo(tmp_path):
    seen = []
    rec = Recorder(fail={"unmount-jails": MaintError("busy")})
    actions = rec.actions()
    start_web = actions["start-web"]

    def observed_start_web(ctx):
        # What a run killed during the undo leaves on disk.
        on_disk = Journal.load(journal(tmp_path).path)
        seen.append((on_disk.state, on_disk.is_done("stop-web")))
        return start_web(ctx)

    actions["start-web"] = observed_start_web
    j = journal(tmp_path)
    with pytest.raises(MaintError):
        Procedure(context(), j, rec.steps(actions)).run((BEFORE,))
    assert seen == [("aborting", True)]
    on_disk = Journal.load(j.path)
    assert on_disk.state == ABORTED and "stop-web" not in on_disk.steps


def test_an_undo_that_crashes_leaves_the_abandonment_owed(tmp_path):
    rec = Recorder(fail={"unmount-jails": MaintError("busy"),
                         "start-web": BrokenPipeError(32, "Broken pipe")})
    j = journal(tmp_path)
    with pytest.raises(MaintError, match="giving the site back on the old code failed too"):
        Procedure(context(), j, rec.steps()).run((BEFORE,))
    on_disk = Journal.load(j.path)
    assert on_disk.state == "aborting" and on_disk.is_done("stop-web")
    assert [x.path for x in Journal.unfinished(tmp_path)] == [j.path]
    # The next abort (a rerun, dpkg's abort-upgrade) finishes it.
    Procedure(context(), on_disk, rec.steps()).abort()
    assert Journal.load(j.path).state == ABORTED and rec.calls[-1] == "start-web"


@pytest.mark.parametrize("signal", [KeyboardInterrupt(), Terminated("terminated (SIGTERM)")],
                         ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("step", IVLE_ORDER)
def test_a_signal_in_any_step_is_journaled_as_interrupted_never_as_a_failure(
        tmp_path, step, signal):
    """Never re-wrapped as a failure (exit 1), never undone: the run stops
    with the resume command, the step journaled as interrupted."""
    rec = Recorder(fail={step: signal})
    with pytest.raises(Interrupted) as caught:
        run(tmp_path, rec)
    assert caught.value.signal is signal and caught.value.resume == "ivle-maint rerun"
    assert exit_status(caught.value.signal) == (143 if isinstance(signal, Terminated) else 130)
    on_disk = Journal.load(Journal.file_for(tmp_path, "1.0", "1.1"))
    assert on_disk.state == IN_PROGRESS
    assert on_disk.steps[step].status == INTERRUPTED
    assert on_disk.steps[step].error == describe(signal)
    assert rec.calls[-1] == step  # nothing undone, nothing after it
    rec.calls.clear()
    run(tmp_path, rec)  # the rerun starts again at the interrupted step
    assert rec.calls == IVLE_ORDER[IVLE_ORDER.index(step):]
    assert Journal.load(on_disk.path).state == COMPLETE


def test_a_signal_while_the_site_is_given_back_leaves_the_abandonment_owed(tmp_path):
    rec = Recorder(fail={"unmount-jails": MaintError("busy"), "start-web": KeyboardInterrupt()})
    with pytest.raises(Interrupted):
        run(tmp_path, rec, phases=(BEFORE,))
    on_disk = Journal.load(Journal.file_for(tmp_path, "1.0", "1.1"))
    assert on_disk.state == ABORTING and on_disk.steps["unmount-jails"].status == FAILED

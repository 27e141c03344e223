"""The runner's own logic: order, roles, journal, resume and abort.

The step actions here are recorders: what is under test is how the runner
walks IVLE's steps, not the steps (tests/integration covers those).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from signal import SIGINT, SIGTERM
from types import SimpleNamespace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ivle_maint import system
from ivle_maint.config import load_settings
from ivle_maint.errors import Interrupted, MaintError
from ivle_maint.gates import waits
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
from ivle_maint.procedure import (
    AFTER,
    BEFORE,
    STEPS,
    Outcome,
    Procedure,
    run_groups,
    steps_for,
)
from ivle_maint.summary import summary_lines
from ivle_sandbox.procs import alive
from support.threads import threads_back_to

IVLE_ORDER = [
    "leave-pool", "stop-web", "stop-consoles", "unmount-jails", "baseline", "migrate",
    "rebuild-jail", "remake-users", "restart-usrmgt", "media-version", "start-web",
    "join-pool",
]
# Each pair runs at the same time.
GROUPS = (("migrate", "rebuild-jail"), ("remake-users", "restart-usrmgt"))
OVERLAPPING = GROUPS[0]


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
    assert slave == ["leave-pool", "stop-web", "stop-consoles", "unmount-jails",
                     "media-version", "start-web", "join-pool"]
    assert master == ["baseline", "migrate", "rebuild-jail", "remake-users", "restart-usrmgt"]
    assert [s.name for s in steps_for("slave", [BEFORE])] == slave[:4]


def test_full_run_completes_and_records_every_step(tmp_path):
    rec = Recorder()
    j = run(tmp_path, rec)
    assert normalized(rec.calls) == IVLE_ORDER
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
    assert rec.calls == ["remake-users", "media-version", "start-web", "join-pool"]  # usrmgt:
    # beside remake-users
    assert j.steps["restart-usrmgt"].status == DONE
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
    # Last done, first undone: the web server starts before the slave rejoins the pool.
    assert rec.calls == ["leave-pool", "stop-web", "stop-consoles", "unmount-jails",
                         "start-web", "join-pool"]
    j = Journal.load(Journal.file_for(tmp_path, "1.0", "1.1"))
    assert j.state == ABORTED
    assert not j.is_done("stop-web")  # a retried upgrade must stop it again

    rec.calls.clear()
    run(tmp_path, rec, phases=(BEFORE,))
    assert rec.calls == ["leave-pool", "stop-web", "stop-consoles", "unmount-jails", "baseline"]


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
    assert rec.calls == ["leave-pool", "stop-web", "start-web", "join-pool"]


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
    assert Journal.load(j.path).state == ABORTED and rec.calls[-2:] == ["start-web", "join-pool"]


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
    # Nothing undone, nothing after it; a step beside it finished (instantly here).
    beside = [s for g in GROUPS if step in g for s in g if s != step]
    assert set(rec.calls[-1 - len(beside):]) == {step, *beside}
    assert all(on_disk.steps[s].status == DONE for s in beside)
    rec.calls.clear()
    run(tmp_path, rec)  # the rerun starts again at the interrupted step
    assert rec.calls == [s for s in IVLE_ORDER[IVLE_ORDER.index(step):] if s not in beside]
    assert Journal.load(on_disk.path).state == COMPLETE


def test_a_signal_while_the_site_is_given_back_leaves_the_abandonment_owed(tmp_path):
    rec = Recorder(fail={"unmount-jails": MaintError("busy"), "start-web": KeyboardInterrupt()})
    with pytest.raises(Interrupted):
        run(tmp_path, rec, phases=(BEFORE,))
    on_disk = Journal.load(Journal.file_for(tmp_path, "1.0", "1.1"))
    assert on_disk.state == ABORTING and on_disk.steps["unmount-jails"].status == FAILED


# -- steps at the same time (issue 25) -------------------------------------------


def normalized(calls: list[str]) -> list[str]:
    """CALLS with the members of a group in IVLE's order (they start at once)."""
    return sorted(calls, key=IVLE_ORDER.index) if set(calls) <= set(IVLE_ORDER) else calls


def test_the_overlapping_steps_are_declared_and_grouped():
    groups = [[s.name for s in g] for g in run_groups(steps_for("both"))]
    assert [g for g in groups if len(g) > 1] == [list(g) for g in GROUPS]
    assert [name for g in groups for name in g] == IVLE_ORDER
    # A step joins only a group every member of which it names.
    migrate, rebuild, remake = (next(s for s in STEPS if s.name == n)
                                for n in ("migrate", "rebuild-jail", "remake-users"))
    assert [len(g) for g in run_groups([rebuild, migrate])] == [1, 1]
    stranger = replace(remake, alongside=(rebuild,))  # names rebuild-jail, not migrate
    assert [len(g) for g in run_groups([migrate, rebuild, stranger])] == [2, 1]
    assert [len(g) for g in run_groups([rebuild, stranger])] == [2]


def test_the_members_really_run_at_the_same_time(tmp_path):
    # Each waits for the other: one after the other, the first would break
    # the barrier (its guard against a hang) and fail.
    barriers = {name: barrier for g in GROUPS
                for barrier in [threading.Barrier(len(g), timeout=120)] for name in g}
    rec = Recorder()
    actions = rec.actions()
    for name, barrier in barriers.items():
        plain = actions[name]
        actions[name] = lambda ctx, plain=plain, b=barrier: (b.wait(), plain(ctx))[1]
    j, ctx = journal(tmp_path), context()
    Procedure(ctx, j, rec.steps(actions)).run((BEFORE, AFTER))
    assert normalized(rec.calls) == IVLE_ORDER
    assert j.state == COMPLETE and all(j.is_done(name) for name in IVLE_ORDER)
    assert "apply database migrations ... (at the same time: rebuild the jail)" in \
        ctx.reporter.lines
    said = [line for line in summary_lines(j, STEPS) if "at the same time" in line]
    assert [line.split(" (")[0] for line in said] == [
        f"  at the same time: {', '.join(g)}" for g in GROUPS]


@pytest.mark.parametrize("conf,rollback,side_by_side", [
    ("", False, True),
    ("[database]\nconnect_as = postgres\n", False, False),
    ("", True, False),  # [rollback] connect_as = postgres by default
    ("[rollback]\nconnect_as = ivle-conf\n", True, True),
])
def test_no_step_runs_beside_one_that_connects_as_another_user(tmp_path, conf, rollback,
                                                                side_by_side):
    """Another system user's connection sets the effective uid of every
    thread (db/connect.py effective_user): then the steps go one at a time."""
    path = tmp_path / "maint.conf"
    path.write_text(conf)
    ctx = context()
    ctx.settings, ctx.rollback = load_settings(str(path)), object() if rollback else None
    in_flight, most = [0], [0]
    lock = threading.Lock()
    rec = Recorder()
    actions = rec.actions()
    for name in OVERLAPPING:
        plain = actions[name]

        def counted(ctx, plain=plain):
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            time.sleep(0.2)
            with lock:
                in_flight[0] -= 1
            return plain(ctx)
        actions[name] = counted
    j = journal(tmp_path / "state")
    Procedure(ctx, j, rec.steps(actions)).run((BEFORE, AFTER))
    assert j.state == COMPLETE
    assert (most[0] > 1) == side_by_side


def test_steps_one_after_the_other_are_not_said_to_overlap(tmp_path):
    j = journal(tmp_path)
    for name in IVLE_ORDER:  # a rerun finishing the group's members one by one
        j.begin(name)
        j.finish(name, "ok", {})
    assert not [line for line in summary_lines(j, STEPS) if "at the same time" in line]


def test_a_failed_member_lets_the_other_finish_and_is_raised_with_the_resume(tmp_path):
    other_done = threading.Event()
    rec = Recorder()
    actions = rec.actions()
    plain = actions["rebuild-jail"]
    actions["rebuild-jail"] = lambda ctx: (other_done.wait(120), plain(ctx))[1]

    def failing_migrate(ctx):
        other_done.set()
        raise MaintError("syntax error at line 3")
    actions["migrate"] = failing_migrate
    j = journal(tmp_path)
    with pytest.raises(MaintError) as caught:
        Procedure(context(), j, rec.steps(actions)).run((BEFORE, AFTER))
    assert str(caught.value) == "apply database migrations failed: syntax error at line 3"
    assert caught.value.resume == "ivle-maint rerun"
    on_disk = Journal.load(j.path)
    assert on_disk.steps["migrate"].status == FAILED
    assert on_disk.steps["rebuild-jail"].status == DONE  # let finish, not thrown away
    assert "remake-users" not in on_disk.steps

    rec.calls.clear()
    run(tmp_path, rec)
    assert rec.calls == ["migrate", *IVLE_ORDER[IVLE_ORDER.index("remake-users"):]]


def test_both_members_failing_name_both_in_one_line(tmp_path):
    rec = Recorder(fail={"migrate": MaintError("no space"),
                         "rebuild-jail": MaintError("apt failed")})
    with pytest.raises(MaintError) as caught:
        run(tmp_path, rec)
    message = str(caught.value)
    assert "\n" not in message
    assert {"apply database migrations failed", "rebuild the jail failed"} <= {
        part.split(": ")[0].removesuffix(" too") for part in message.split("; ")}
    on_disk = Journal.load(Journal.file_for(tmp_path, "1.0", "1.1"))
    assert {on_disk.steps[n].status for n in OVERLAPPING} == {FAILED}


def test_the_observer_is_told_in_the_main_thread_only(tmp_path):
    told: list[tuple[str, str | None, bool]] = []

    def observer(event, step):
        told.append((event.value, step.name if step else None,
                     threading.current_thread() is threading.main_thread()))

    rec = Recorder()
    Procedure(context(), journal(tmp_path), rec.steps(), observer).run((BEFORE, AFTER))
    assert all(main for _, _, main in told)
    for name in OVERLAPPING:
        assert [e for e, n, _ in told if n == name] == ["begin", "done"]


def test_the_cluster_link_serves_one_thread_at_a_time(tmp_path):
    inside = [0]
    most = [0]
    guard = threading.Lock()

    class Link:
        name, enabled, journal, steps = "m", True, None, ()

        def query(self, look):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.01)  # a query takes a while: room for the other thread
            with guard:
                inside[0] -= 1
            return look(None)

    ctx = context()
    ctx.cluster = Link()
    rec = Recorder()
    actions = rec.actions()
    for name in OVERLAPPING:
        plain = actions[name]
        actions[name] = lambda c, plain=plain: ([c.cluster.query(lambda _: 1)
                                                 for _ in range(20)], plain(c))[1]
    Procedure(ctx, journal(tmp_path), rec.steps(actions)).run((BEFORE, AFTER))
    assert most[0] == 1
    assert isinstance(ctx.cluster, Link)  # given back after the group


# Generated: what each member does, and whether a signal waits for the other
# member's record.  A member that "waits" runs a real child until stopped.
ACTIONS = st.sampled_from(["ok", "fail", "signal", "wait"])


@settings(max_examples=25, deadline=None)
@given(first=ACTIONS, second=ACTIONS, late=st.booleans(),
       sig=st.sampled_from([SIGINT, SIGTERM]))
def test_any_mix_of_failure_and_signal_in_a_group_journals_each_member_exactly(
        first, second, late, sig):
    plan = dict(zip(OVERLAPPING, (first, second), strict=True))
    signalled = [n for n, a in plan.items() if a == "signal"]
    assume(len(signalled) <= 1 and ("wait" not in plan.values() or signalled))
    with tempfile.TemporaryDirectory() as tmp:
        _mix(Path(tmp), plan, late, sig)


def _mix(tmp_path: Path, plan: dict[str, str], late: bool, sig: int) -> None:
    rec = Recorder()
    actions = rec.actions()
    j = journal(tmp_path)
    pids: list[int] = []
    threads = threading.active_count()

    def member(name: str):
        def act(ctx) -> Outcome:
            rec.calls.append(name)
            what = plan[name]
            if what == "fail":
                raise MaintError(f"{name} broke")
            if what == "signal":
                other = next(n for n in OVERLAPPING if n != name)
                while late and plan[other] != "wait" and j.is_running(other):
                    time.sleep(0.005)
                os.kill(os.getpid(), sig)
            if what in ("signal", "wait"):
                done = system.run(["sh", "-c", 'echo "$$"; exec sleep 300'],
                                  on_line=lambda line: pids.append(int(line)))
                waits.checkpoint()  # stopped: unwinds as the interruption
                raise MaintError(f"{name}: sleep ended {done.exit_code}")
            return Outcome(f"{name} ok")
        return act

    for name in OVERLAPPING:
        actions[name] = member(name)
    failing = [n for n, a in plan.items() if a == "fail"]
    with waits.signals():
        try:
            Procedure(context(), j, rec.steps(actions)).run((BEFORE, AFTER))
        except Interrupted as exc:
            assert "signal" in plan.values()
            assert exit_status(exc.signal) == 128 + sig
        except MaintError as exc:
            assert "signal" not in plan.values() and failing
            assert str(exc).startswith(tuple(f"{STEP_TITLES[n]} failed: {n} broke"
                                             for n in failing))
        else:
            assert set(plan.values()) == {"ok"}
    assert threads_back_to(threads) == []  # no worker left
    assert not [pid for pid in pids if alive(pid)]  # no child left
    on_disk = Journal.load(j.path)
    status = {n: on_disk.steps[n].status for n in OVERLAPPING}
    called = set(rec.calls)
    for name, what in plan.items():
        if what == "ok":  # done if it ran; else the signal came before it started
            assert status[name] == (DONE if name in called else INTERRUPTED)
            assert name in called or not late
        elif what in ("signal", "wait"):
            assert status[name] == INTERRUPTED
            said = Terminated() if sig == SIGTERM else KeyboardInterrupt()
            assert on_disk.steps[name].error == describe(said)
        elif late or "signal" not in plan.values():
            assert status[name] == FAILED
        else:  # its failure and the signal raced: either tells the truth
            assert status[name] in (FAILED, INTERRUPTED)
    # The rerun runs exactly the members not done, then the rest.
    rec.calls.clear()
    Procedure(context(), on_disk, rec.steps()).run((BEFORE, AFTER))
    not_done = [n for n in OVERLAPPING if status[n] != DONE]
    rest = IVLE_ORDER[IVLE_ORDER.index("remake-users"):] if not_done else []
    assert normalized(rec.calls) == [*not_done, *rest]
    assert Journal.load(j.path).state == COMPLETE


STEP_TITLES = {s.name: s.title for s in STEPS}



def test_a_wait_in_a_group_is_told_on_the_row_of_its_first_running_member(tmp_path):
    rows: list[tuple[str, str]] = []

    class Link:
        name, enabled, journal, steps = "m", True, None, ()

        def waiting(self, step, note):
            rows.append((step, note))

    meet = threading.Barrier(2, timeout=120)  # both still running at the wait
    ctx = context()
    ctx.cluster = Link()
    rec = Recorder()
    actions = rec.actions()
    for name in OVERLAPPING:
        plain = actions[name]

        def act(c, name=name, plain=plain):
            meet.wait()
            c.cluster.waiting(name, "waiting for the slaves")
            meet.wait()
            return plain(c)
        actions[name] = act
    Procedure(ctx, journal(tmp_path), rec.steps(actions)).run((BEFORE, AFTER))
    assert sorted(rows) == [("migrate", "rebuild-jail waiting for the slaves"),
                            ("migrate", "waiting for the slaves")]


@pytest.mark.parametrize("done", [(), ("restart-usrmgt",), ("remake-users",),
                                  ("remake-users", "restart-usrmgt")])
def test_a_master_serves_new_only_once_every_step_up_to_its_last_start_is_done(tmp_path, done):
    """restart-usrmgt may end before remake-users beside it: a slave reads
    the master's "serves NEW" as "the master is done" (cluster/waits.py)."""
    from ivle_maint.context import serving

    j = journal(tmp_path)
    for name in ("baseline", "migrate", "rebuild-jail", *done):
        j.begin(name)
        j.finish(name, "ok", {})
    whole = set(done) == {"remake-users", "restart-usrmgt"}
    assert serving("master", j, STEPS) == ("1.1" if whole else "1.0")


def test_every_step_and_every_undo_runs_its_commands_through_quickrun(tmp_path):
    """The site is down while steps run: system.run must not wait on sh's
    poll there, in a step alone, in a group's worker thread, or in an undo."""
    from ivle_maint import system

    class Counting(Recorder):
        def actions(self) -> dict:
            acts = super().actions()
            def counted(name: str, act):
                def run_counted(ctx) -> Outcome:
                    seen.append((name, system._running.count))
                    return act(ctx)
                return run_counted
            return {name: counted(name, act) for name, act in acts.items()}

    seen: list[tuple[str, int]] = []
    run(tmp_path / "full", Counting())
    assert [name for name, _ in seen] and all(count > 0 for _, count in seen), seen
    assert {"migrate", "rebuild-jail", "remake-users", "restart-usrmgt"} <= {n for n, _ in seen}
    seen.clear()
    with pytest.raises(MaintError):  # the before-phase fails: start-web undoes stop-web
        run(tmp_path / "abandoned", Counting(fail={"unmount-jails": MaintError("busy")}),
            phases=(BEFORE,))
    assert "start-web" in {n for n, _ in seen} and all(count > 0 for _, count in seen), seen
    assert system._running.count == 0  # and none once the run is over

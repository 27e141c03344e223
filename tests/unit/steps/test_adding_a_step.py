"""Adding a step touches its module and procedure.STEPS, nothing else.

A step made here, as a new module would make it (its own preflight
check, program, plan line and summary metric), is put into a copy of
IVLE's step list; the runner, the plan, the preflight and the summary then
take it in, in its place, with no other module edited.  The other steps'
own proofs and plan lines need a real node (tests/integration): here they
are left out of the copy, so that what is seen is the new step's alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ivle_maint import preflight
from ivle_maint.config import Settings, load_settings
from ivle_maint.context import (
    Check,
    Metric,
    Outcome,
    Phase,
    PlanLines,
    PlanPart,
    PreflightStage,
    Role,
    Step,
    UpgradeContext,
)
from ivle_maint.errors import MaintError
from ivle_maint.journal import Journal
from ivle_maint.output import RecordingReporter
from ivle_maint.plan import describe
from ivle_maint.procedure import STEPS, Procedure
from ivle_maint.summary import summary_lines

PROGRAM = "/bin/true"  # found on every machine the tests run on


class TidyCaches:
    """What a new module, ivle_maint/steps/tidy_caches.py, would hold."""

    def __init__(self, *, fails: str = "", program: str = PROGRAM) -> None:
        self.checked: list[Any] = []
        self.fails, self.program = fails, program

    def run(self, ctx: UpgradeContext) -> Outcome:
        return Outcome("tidied 3 caches", {"tidied": 3})

    def check(self, ctx: UpgradeContext) -> None:
        self.checked.append(ctx)
        if self.fails:
            raise MaintError(self.fails)

    def step(self) -> Step:
        return Step(
            "tidy-caches", "tidy the web caches", Role.SLAVE, Phase.AFTER, self.run,
            programs=lambda settings: [self.program],
            checks=(Check(PreflightStage.IVLE_CONF, self.check),),
            plan=(PlanLines(PlanPart.WEB, lambda ctx, source: ["caches: 3 to tidy"]),),
            metrics=(Metric("tidied", "caches tidied"),),
        )


def with_step(new: Step, after: str = "media-version") -> list[Step]:
    """A copy of procedure.STEPS with NEW after AFTER, as STEPS would list it;
    the others' own checks and plan lines (a real node's) left out."""
    steps = [replace(s, checks=(), programs=None, plan=(), cluster_wait=None) for s in STEPS]
    at = [s.name for s in steps].index(after) + 1
    return [*steps[:at], new, *steps[at:]]


def settings(tmp_path: Path, role: str = "both") -> Settings:
    path = tmp_path / "ivle-maint.conf"
    path.write_text(f"[node]\nrole = {role}\nname = node1\n[paths]\nstate = {tmp_path / 'state'}\n"
                    "[cluster]\ncoordinate = never\n")
    return load_settings(str(path))


def context(tmp_path: Path, role: str = "both") -> Any:
    """What the preflight and the plan read of an UpgradeContext."""
    return SimpleNamespace(settings=settings(tmp_path, role), reporter=RecordingReporter(),
                           old="", new="1.1", ivle_conf=None, cluster=None, during_upgrade="")


@pytest.fixture(autouse=True)
def no_init_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The services' init scripts are a real node's (tests/integration).
    monkeypatch.setattr(preflight, "check_init_scripts", lambda settings: None)


def test_the_new_step_is_planned_in_its_place(tmp_path: Path) -> None:
    lines = describe(context(tmp_path), steps=with_step(TidyCaches().step()))
    planned = [line.split()[1] for line in lines if line.startswith(("  before", "  after"))]
    assert planned[planned.index("media-version") + 1] == "tidy-caches"
    assert "  after  tidy-caches     tidy the web caches" in lines
    assert "caches: 3 to tidy" in lines


def test_the_new_steps_check_runs_in_the_preflight(tmp_path: Path) -> None:
    tidy = TidyCaches()
    ctx = context(tmp_path)
    preflight.check(ctx, with_step(tidy.step()))
    assert tidy.checked == [ctx]
    assert ctx.reporter.lines[-1].endswith("preflight checks passed")


def test_a_failing_check_of_the_new_step_fails_the_preflight_with_its_line(
        tmp_path: Path) -> None:
    tidy = TidyCaches(fails="/var/cache/ivle: the caches cannot be tidied there")
    ctx = context(tmp_path)
    with pytest.raises(MaintError) as failed:
        preflight.check(ctx, with_step(tidy.step()))
    assert str(failed.value) == "/var/cache/ivle: the caches cannot be tidied there"
    assert not any("preflight checks passed" in line for line in ctx.reporter.lines)


def test_a_missing_program_of_the_new_step_fails_the_preflight(tmp_path: Path) -> None:
    tidy = TidyCaches(program="/nonexistent/ivle-tidycaches")
    with pytest.raises(MaintError, match=r"not found: /nonexistent/ivle-tidycaches "):
        preflight.check(context(tmp_path), with_step(tidy.step()))
    assert tidy.checked == []  # the programs come first


def test_a_node_whose_role_does_not_run_the_new_step_does_not_check_it(tmp_path: Path) -> None:
    tidy = TidyCaches(fails="never asked on a master")
    preflight.check(context(tmp_path, role="master"), with_step(tidy.step()))
    assert tidy.checked == []


def test_the_new_step_runs_in_its_place_and_is_summarised(tmp_path: Path) -> None:
    calls: list[str] = []

    def recorded(step: Step) -> Step:
        def run(ctx: Any) -> Outcome:
            calls.append(step.name)
            return step.run(ctx) if step.name == "tidy-caches" else Outcome("ok")
        return replace(step, run=run)

    steps = [recorded(s) for s in with_step(TidyCaches().step())]
    journal = Journal.open(tmp_path, "1.0", "1.1", "both")
    ctx = SimpleNamespace(reporter=RecordingReporter(), code_is_new=False)
    Procedure(ctx, journal, steps).run((Phase.BEFORE, Phase.AFTER))  # type: ignore[arg-type]
    assert calls[calls.index("media-version") + 1] == "tidy-caches"
    lines = summary_lines(journal, steps)
    assert "  caches tidied: 3" in lines
    assert "  caches tidied: 3" not in summary_lines(journal, list(STEPS))  # its own line

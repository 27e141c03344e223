"""The consoles step's report: bounded, whatever the number of processes and jails."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.consoles.jail_processes import JAIL_LINES, JailProcess, Stopped, _report
from ivle_maint.output import RecordingReporter

jails = st.sampled_from([f"user{i:04d}" for i in range(40)])
hows = st.sampled_from(["terminated", "killed", "vanished"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(jails, hows), max_size=700))
def test_one_line_per_jail_at_most_ten_then_one_for_the_rest(ended: list[tuple[str, str]]):
    stopped = [Stopped(JailProcess(1000 + i, jail, 5000, ("sleep", "600"), "cwd", "/x", jail),
                       how) for i, (jail, how) in enumerate(ended)]  # fmt: skip
    ignored = [s.process for s in stopped if s.how == "killed"]
    rep = RecordingReporter()
    _report(stopped, ignored, 10, rep)
    named = {jail for jail, _ in ended}
    assert len(rep.lines) <= 2 * (min(len(named), JAIL_LINES) + (len(named) > JAIL_LINES))
    said = [line for line in rep.lines if not line.startswith("warning: ")]
    total = sum(int(line.split(": ")[1].split()[0]) for line in said)
    killed = sum(int(line.rsplit("(", 1)[1].split()[0]) for line in said)
    assert (total, killed) == (len(ended), len(ignored))
    assert all("\n" not in line for line in rep.lines)

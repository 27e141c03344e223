"""The end-of-upgrade summary, read from the journal (it spans processes).

Each step says what of its record is worth a line (Step.metrics); the
lines come part by part (context.SummaryPart), each in the procedure's order.
"""

from __future__ import annotations

from collections.abc import Sequence

from .context import Metric, Step, SummaryPart, downtime, run_groups, select_steps
from .journal import DONE, SKIPPED, Journal, StepRecord

__all__ = ["SKIPPED", "summary_lines", "web_down_line", "web_down_seconds"]


def web_down_seconds(journal: Journal, steps: Sequence[Step]) -> float | None:
    """From the web server's stop to its start again, across dpkg's scripts
    (context.downtime; gates.clock: never negative; None when not known)."""
    down = downtime(steps)
    return journal.down_for(*down) if down else None


def web_down_line(journal: Journal, steps: Sequence[Step]) -> str | None:
    """The summary's downtime line; None when the web server was not both
    stopped and started again."""
    down = downtime(steps)
    if down is None:
        return None
    stop, start = (journal.steps.get(name) for name in down)
    if stop is None or start is None or start.finished is None:
        return None
    if SKIPPED in stop.metrics:  # release_needs: the site stayed up
        return "  web service not stopped (reloaded on the new code)"
    seconds = journal.down_for(*down)
    if seconds is None:
        return ("  web service down for an unknown time (the recorded times disagree: "
                "the clock was changed)")
    return f"  web service down for {seconds:.1f}s"


def together_lines(journal: Journal, steps: Sequence[Step]) -> list[str]:
    """A line per group of steps that ran at the same time (context.run_groups):
    their work, and the time it took together.  Members ran at the same
    time when each ended after every other began (a span that is > 0)."""
    lines = []
    mine = select_steps(journal.role, (s.phase for s in steps), steps)
    for group in run_groups(mine):
        names = [s.name for s in group]
        if len(group) < 2 or not all(journal.is_done(name) for name in names) or \
                any(SKIPPED in journal.steps[name].metrics for name in names):
            continue
        work = [journal.span(name, name) for name in names]
        took = [journal.span(first, last) for first in names for last in names]
        if None in work or None in took or 0 in took:
            continue  # one after the other (a rerun), or the clocks cannot tell
        together = max(t for t in took if t is not None)
        lines.append(f"  at the same time: {', '.join(names)} "
                     f"({sum(w for w in work if w is not None):.1f}s of work in "
                     f"{together:.1f}s)")
    return lines


def metric_line(metric: Metric, record: StepRecord | None) -> str | None:
    """METRIC's line from a step's record; None when there is nothing to say."""
    if record is None or (metric.when_done and record.status != DONE):
        return None
    shown = metric.show(record.metrics.get(metric.key), record.metrics)
    if shown is None:
        return None
    return f"  {metric.label}: {shown}".rstrip() if shown else f"  {metric.label}"


def summary_lines(journal: Journal, steps: Sequence[Step]) -> list[str]:
    """What a person wants to know once the upgrade is over (STEPS: procedure.STEPS)."""
    lines = [f"upgrade {journal.old or '(none)'} -> {journal.new}: {journal.state}"]
    down = web_down_line(journal, steps)
    if down is not None:
        lines.append(down)
    lines += together_lines(journal, steps)
    for part in SummaryPart:
        for step in steps:
            for metric in step.metrics:
                line = metric_line(metric, journal.steps.get(step.name)) \
                    if metric.part == part else None
                if line is not None:
                    lines.append(line)
    for step in steps:  # the order of IVLE's upgrade procedure, not the file's
        record = journal.steps.get(step.name)
        if record is not None and record.status == DONE and SKIPPED in record.metrics:
            lines.append(f"  {step.name}: skipped: {record.metrics[SKIPPED]}")
        if record is not None and record.status != DONE:
            lines.append(f"  {step.name}: {record.status}: {record.error or ''}".rstrip(": "))
    return lines

"""The end-of-upgrade summary, read from the journal (it spans processes).

Each step says what of its record is worth a line (Step.metrics); the
lines come part by part (context.SummaryPart), each in the procedure's order.
"""

from __future__ import annotations

from collections.abc import Sequence

from .context import Metric, Step, SummaryPart, downtime
from .journal import DONE, Journal, StepRecord

# A skipped step's metric (release_needs.SKIPPED: that module sits above this one).
SKIPPED = "skipped"


def web_down_seconds(journal: Journal, steps: Sequence[Step]) -> float | None:
    """From the web server's stop to its start again, across dpkg's scripts
    (context.downtime; gates.clock: never negative; None when not known)."""
    down = downtime(steps)
    return journal.span(*down) if down else None


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
    seconds = journal.span(*down)
    if seconds is None:
        return ("  web service down for an unknown time (the recorded times disagree: "
                "the clock was changed)")
    return f"  web service down for {seconds:.1f}s"


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

"""The end-of-upgrade summary, read from the journal (it spans processes)."""

from __future__ import annotations

from collections.abc import Sequence

from .context import Step
from .journal import Journal


def web_down_seconds(journal: Journal) -> float | None:
    """From the web server's stop to its start again, across dpkg's scripts
    (gates.clock: never negative; None when not known)."""
    return journal.span("stop-web", "start-web")


def web_down_line(journal: Journal) -> str | None:
    """The summary's downtime line; None when the web server was not both
    stopped and started again."""
    start = journal.steps.get("start-web")
    if "stop-web" not in journal.steps or start is None or start.finished is None:
        return None
    down = web_down_seconds(journal)
    if down is None:
        return ("  web service down for an unknown time (the recorded times disagree: "
                "the clock was changed)")
    return f"  web service down for {down:.1f}s"


def _metric(journal: Journal, step: str, key: str) -> object:
    record = journal.steps.get(step)
    return record.metrics.get(key) if record else None


def summary_lines(journal: Journal, steps: Sequence[Step]) -> list[str]:
    """What a person wants to know once the upgrade is over (STEPS: procedure.STEPS)."""
    lines = [f"upgrade {journal.old or '(none)'} -> {journal.new}: {journal.state}"]
    down = web_down_line(journal)
    if down is not None:
        lines.append(down)
    applied = _metric(journal, "migrate", "migrations_applied")
    if isinstance(applied, list):
        lines.append(f"  migrations applied: {len(applied)} {' '.join(applied)}".rstrip())
    for name, key, label in (
        ("stop-consoles", "consoles_stopped", "consoles stopped"),
        ("unmount-jails", "jails_unmounted", "jail mounts unmounted"),
        ("remake-users", "rebuilt", "user jails rebuilt"),
    ):
        value = _metric(journal, name, key)
        if value is not None:
            lines.append(f"  {label}: {value}")
    if journal.is_done("rebuild-jail"):
        lines.append("  jail template rebuilt")
    if journal.is_done("media-version"):
        old = _metric(journal, "media-version", "media_old")
        new = _metric(journal, "media-version", "media_new")
        lines.append(f"  media version: {old or '(unset)'} -> {new or '(unset)'}")
    for step in steps:  # the order of IVLE's upgrade procedure, not the file's
        record = journal.steps.get(step.name)
        if record is not None and record.status != "done":
            lines.append(f"  {step.name}: {record.status}: {record.error or ''}".rstrip(": "))
    return lines

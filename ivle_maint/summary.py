"""The end-of-upgrade summary, read from the journal (it spans processes)."""

from __future__ import annotations

from .journal import Journal


def web_down_seconds(journal: Journal) -> float | None:
    """From the web server's stop to its start again, across dpkg's scripts."""
    stop, start = journal.steps.get("stop-web"), journal.steps.get("start-web")
    if stop is None or start is None or start.finished is None:
        return None
    return start.finished - stop.started


def summary_lines(journal: Journal) -> list[str]:
    """What a person wants to know once the upgrade is over."""
    lines = [f"upgrade {journal.old or '(none)'} -> {journal.new}: {journal.state}"]
    down = web_down_seconds(journal)
    if down is not None:
        lines.append(f"web service down for {down:.1f}s")
    for name, record in journal.steps.items():
        lines.append(f"{name}: {record.status}: {record.error or record.summary}")
    return lines

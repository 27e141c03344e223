"""Where a booted node's outage went, on one clock (benchmarks).

The host, the probe and every node read the same CLOCK_MONOTONIC (nspawn
gives a node no time namespace), so three records line up:

- the probe's answers (scenario.Probe.window: last old page, first new one);
- ivle-maint's steps, from its journal on the node (mono_started and
  mono_finished of every step record);
- systemd's own jobs, from the node's journal: PID 1's "Stopping X..." to
  "Stopped X." (and Starting/Started, Reloading/Reloaded), told apart by
  their MESSAGE_IDs, paired per unit and job id.

`step_lines` prints each step's time beside the systemd jobs that ran
inside it: the difference is what ivle-maint spends around systemd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .scenario import Guest

# sd-messages.h: a job began (unit starting/stopping/reloading) ...
BEGINS = {"7d4958e842da4a758f6c1cdc7b36dcc5": "start",
          "de5b426a63be47a7b6ac3eaac82e2f6f": "stop",
          "d34d037fff1847e6ae669a370e694725": "reload"}
# ... and ended (started/stopped/reloaded).
ENDS = {"39f53479d3a045ac8e11786248231fbf": "start",
        "9d1aaa27d60140bd96365438aad20286": "stop",
        "7b05ebc668384222baa8881179cfda54": "reload"}
UNITS = ("apache2.service", "ivle-usrmgt-server.service")
JOURNALS = "/var/lib/ivle-maint/journal"


@dataclass
class Span:
    """Something that ran from begin to end (CLOCK_MONOTONIC seconds)."""

    name: str
    begin: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.begin


def systemd_jobs(guest: Guest, since: float, units: tuple[str, ...] = UNITS) -> list[Span]:
    """PID 1's jobs on units since `since`, e.g. Span('apache2 stop', ...), in order."""
    out = guest.node.run("journalctl", "-o", "json", "--no-pager", "_PID=1",
                         *[f"UNIT={u}" for u in units], merge=False, check=False).stdout
    begun: dict[tuple[str, str, str], float] = {}
    spans = []
    for line in out.splitlines():
        entry = json.loads(line)
        t = int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6
        unit = str(entry.get("UNIT", "")).removesuffix(".service")
        msg = entry.get("MESSAGE_ID", "")
        key = (unit, str(entry.get("JOB_ID", "")), BEGINS.get(msg) or ENDS.get(msg, ""))
        if t < since:
            continue
        if msg in BEGINS:
            begun[key] = t
        elif msg in ENDS and key in begun:
            spans.append(Span(f"{unit} {key[2]}", begun.pop(key), t))
    return sorted(spans, key=lambda s: s.begin)


def maint_steps(guest: Guest) -> list[Span]:
    """ivle-maint's steps of the upgrade journal(s) on the node, in the order they ran."""
    out = guest.node.run("sh", "-c", f"cat {JOURNALS}/*.json 2>/dev/null", check=False).stdout
    spans = []
    decoder = json.JSONDecoder()
    text = out.strip()
    while text:  # the files, one JSON object after another
        data, end = decoder.raw_decode(text)
        text = text[end:].strip()
        for name, record in dict(data.get("steps", {})).items():
            begin, finish = record.get("mono_started"), record.get("mono_finished")
            if begin is not None and finish is not None:
                spans.append(Span(name, float(begin), float(finish)))
    return sorted(spans, key=lambda s: s.begin)


def step_lines(steps: list[Span], jobs: list[Span], window: tuple[float, float] | None,
               ) -> list[str]:
    """One line per step: its time, the systemd jobs inside it, where it falls in the outage."""
    lines = []
    for step in steps:
        inside = [j for j in jobs if step.begin <= j.begin <= step.end]
        systemd = ", ".join(f"{j.name} {j.seconds:.2f}s" for j in inside)
        where = ""
        if window is not None:
            where = f"  [outage +{step.begin - window[0]:.1f}s to +{step.end - window[0]:.1f}s]"
        lines.append(f"    {step.name:15} {step.seconds:5.2f}s"
                     f"{'  systemd: ' + systemd if systemd else ''}{where}")
    if window is not None and steps:
        covered = sum(max(0.0, min(s.end, window[1]) - max(s.begin, window[0])) for s in steps)
        lines.append(f"    outage {window[1] - window[0]:.2f}s: {covered:.2f}s in ivle-maint's "
                     f"steps, {window[1] - window[0] - covered:.2f}s outside them (dpkg, apt, "
                     "maintainer scripts, start-up, the probe's interval)")
    return lines

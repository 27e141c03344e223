"""What a node's row may be trusted to say: pure decisions over ivle_maint_nodes.

A row says what its node's ivle-maint last did, when it did it.  The rules:

- A web node counts as "down" for the master's migration only when its
  row is confirmed: an upgrade's journal stopped its web server (the row
  has a target) or its code is not older than the target.  An idle row of
  old code saying "down" was written at some moment in the past (at
  install, before the web server existed; before an administrator or a
  boot started it): nothing keeps it down, so it is not trusted
  (unconfirmed_down); the master waits for it as for a serving slave.
- Whether the ivle-maint named in a row of a running phase still runs is
  liveness.judge's answer (runner); "waiting" from a process that exited
  is shown as such.
- A node may be forgotten (its row deleted, so the master stops waiting
  for it) only when nothing says it is alive: no live (or unknowable)
  ivle-maint writes its row, its web server neither answers nor is
  recorded as serving, its last row counts no jail mount and no console
  (forget_refusals).  A row in the middle of an upgrade whose ivle-maint
  is not known dead is refused however long ago it was written: its age
  is by the database server's clock (gates.clock), which a jump forward
  makes look old, and a node between dpkg's scripts writes nothing for as
  long as the administrator waits.  --force overrides, and says what it
  means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import liveness
from ..context import Phase, Role
from ..errors import MaintError
from ..gates.text import ivle_maint
from ..versions import parse
from .ages import human_age

if TYPE_CHECKING:
    from .table import NodeRow

RUNNING_PHASES = (Phase.BEFORE, Phase.AFTER, "waiting")


def older(version: str | None, new: str) -> bool:
    """Is VERSION older than NEW?  Unknown or unparsable counts as older."""
    if version is None:
        return True
    try:
        return bool(parse(version) < parse(new))
    except MaintError:
        return True


def abandoned_note(version: str) -> str:
    """The note of an idle row whose upgrade to VERSION was given up
    (presence.observe writes it; gave_up reads it)."""
    return f"upgrade to {version} abandoned"


def past_before_phase(row: NodeRow, new: str) -> bool:
    """Has ROW's node done its before-phase of the upgrade to NEW (its code
    may be unpacked), or is it already on NEW?"""
    if row.target == new:
        return row.phase in ("unpack", Phase.AFTER, "waiting")
    return row.target is None and row.version == new


def gave_up(row: NodeRow, new: str) -> str:
    """Why ROW's node will not reach NEW's unpack by itself ("" if it may):
    its upgrade to NEW failed before its code changed, or was abandoned."""
    if row.target == new and row.phase == "failed" and row.version != new:
        return f"its upgrade failed at {row.step or 'a step'}: {row.note or 'no note'}"
    if row.target is None and row.note == abandoned_note(new) and row.version != new:
        return f"it gave its upgrade up (serves {row.serving or 'nothing'})"
    return ""


def stopped(row: NodeRow, new: str) -> str:
    """Why ROW's node will not finish its upgrade (or rollback) to NEW by
    itself ("" if it may): it failed at any step, or gave its upgrade up.
    A master's failure after its code changed counts too (gave_up's does
    not): a slave waiting for its steps waits for a person, not for it."""
    if row.target == new and row.phase == "failed":
        return f"it failed at {row.step or 'a step'}: {row.note or 'no note'}"
    if row.target is None and row.note == abandoned_note(new) and row.version != new:
        return f"it gave its upgrade up (serves {row.serving or 'nothing'})"
    return ""


def unconfirmed_down(rows: list[NodeRow], me: str, new: str) -> list[NodeRow]:
    """Other web nodes whose row says down, of code older than NEW, that no
    upgrade confirms: idle rows, whose web server may start at any moment."""
    return [r for r in rows if r.name != me and r.has_web and r.serving is None
            and r.target is None and older(r.version, new)]


def runner(row: NodeRow) -> liveness.Judgement | None:
    """Whether the ivle-maint writing ROW runs; None when ROW's run ended."""
    if row.phase not in RUNNING_PHASES:
        return None
    return liveness.judge(liveness.parse(row.runner), row.host)


@dataclass(frozen=True)
class Seen:
    """What the node asking saw of another node, beside its row."""

    runner: liveness.Verdict | None  # None: its row names no running process
    answers: bool | None  # its web server answered the probe; None: not checkable


def forget_refusals(row: NodeRow, seen: Seen) -> list[str]:
    """Why ROW's node must not be forgotten; [] when nothing says it is alive."""
    found = []
    age = human_age(row.age)
    where = row.phase + (f" at {row.step}" if row.step else "")
    if seen.runner is liveness.Verdict.ALIVE:
        found.append(f"its ivle-maint runs ({where})")
    elif row.phase != "idle" and seen.runner is not liveness.Verdict.DEAD:
        found.append(f"it was seen {age} in the middle of an upgrade ({where})")
    if row.has_web and (seen.answers or (seen.answers is None and row.serving)):
        found.append("its web server answers" if seen.answers
                     else f"its row says its web server serves {row.serving}")
    if (row.mounts or 0) > 0 or (row.consoles or 0) > 0:
        found.append(f"its last row counts {row.mounts or 0} jail mount(s) and "
                     f"{row.consoles or 0} console(s)")
    return found


def forget_meaning(name: str) -> str:
    """What forgetting a node that may be alive does, for --force's warning."""
    return (f"the master stops waiting for {name}: its next upgrade migrates the schema and "
            f"rebuilds the shared jail tree even while {name} serves old code or has jails "
            "mounted, and its next ivle-maint run records it again")


def is_master(row: NodeRow) -> bool:
    return row.node_role is not None and row.node_role.runs_database


def other_masters(rows: list[NodeRow], me: str) -> list[NodeRow]:
    """The master rows other than ME's: a cluster has one master."""
    return [r for r in rows if is_master(r) and r.name != me]


def upgrade_past(rows: list[NodeRow], me: str, version: str | None) -> list[str]:
    """Why a web node at VERSION must not join now: a master upgrading to, or
    already on, a newer version (its web server would serve old code on the
    new schema)."""
    found = []
    for row in other_masters(rows, me):
        if row.phase != "idle" and row.target and older(version, row.target):
            found.append(f"{row.name} is upgrading to {row.target} "
                         f"({row.phase}" + (f" at {row.step})" if row.step else ")"))
        elif row.phase == "idle" and row.version and older(version, row.version):
            found.append(f"{row.name} is on {row.version}")
    return found


def second_master(rows: list[NodeRow], me: str, role: Role | str) -> str | None:
    """Why a node of ROLE named ME may not act as master here; None if it may."""
    others = other_masters(rows, me) if Role(role).runs_database else []
    if not others:
        return None
    row = others[0]
    return (f"{row.name} (host {row.host}, seen {human_age(row.age)}) is already this "
            f"cluster's {row.role} node: one master per database; if it is gone for good: "
            f"{ivle_maint('cluster', 'forget', row.name)}")

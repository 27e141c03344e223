"""The two bounded waits that keep new code off an old schema.

- A slave (before start-web, new code on disk) waits until the marker
  lists every migration its own package ships: the master has applied
  them.  It asks the marker, not the master's row, so it needs nothing
  from the master but the one fact that matters.
- The master (before migrate) waits until no other node's web server
  serves code older than the target, unless told to go ahead
  ([cluster] migrate_while_serving, or --migrate-while-serving).

Each look is one query; progress is printed when what is awaited changes
and every PROGRESS_EVERY seconds; the row in ivle_maint_nodes says
"waiting" all along.  A look that loses its connection (PostgreSQL
restarted, as apt may do on the master) reconnects within [database]
wait_timeout (Presence.query).  At the deadline the step fails with the
resume command; nothing hangs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MaintError
from . import probe, table
from .ages import human_age

if TYPE_CHECKING:
    from ..upgrade import UpgradeContext
    from .table import NodeRow

PROGRESS_EVERY = 30.0


@dataclass(frozen=True)
class Pending:
    key: str  # what is awaited; progress is printed when it changes
    text: str  # the same for a person, with details that change each look


class TimedOut(Exception):
    def __init__(self, pending: Pending) -> None:
        super().__init__(pending.text)
        self.pending = pending


def describe(row: NodeRow) -> str:
    seen = "never seen" if row.age is None else f"seen {human_age(row.age)}"
    where = f"{row.phase}" + (f" at {row.step}" if row.step else "")
    serving = f"serves {row.serving}" if row.serving else "down"
    return f"{row.name} ({row.role}, {serving}, {where}, {seen})"


def poll(ctx: UpgradeContext, check: Callable[[Any], Pending | None], *, step: str,
         timeout: float, label: str) -> float:
    """Call check(conn) until it returns None; the seconds waited."""
    presence = ctx.cluster
    interval = float(ctx.settings["cluster"]["poll"])
    started = time.monotonic()
    shown, shown_at = "", 0.0
    while True:
        pending = presence.query(check)  # reconnects if the server restarts
        now = time.monotonic()
        if pending is None:
            return now - started
        waited = now - started
        if pending.key != shown or now - shown_at >= PROGRESS_EVERY:
            ctx.reporter.info(f"waiting for {label}: {pending.text} "
                              f"({waited:.0f}s of {timeout:g}s)")
            shown, shown_at = pending.key, now
        ctx.reporter.progress(f"waiting for {label}", int(waited), int(timeout))
        presence.waiting(step, f"waiting for {label}: {pending.text}")
        if waited >= timeout:
            raise TimedOut(pending)
        time.sleep(min(interval, max(0.0, timeout - waited)))


def _older(serving: str | None, new: str) -> bool:
    """Is a service at SERVING running code older than NEW?  Unknown counts as old."""
    from ..versions import parse

    if serving is None:
        return False
    try:
        return bool(parse(serving) < parse(new))
    except MaintError:
        return True


def serving_old(rows: list[NodeRow], me: str, new: str) -> list[NodeRow]:
    return [r for r in rows if r.name != me and r.has_web and _older(r.serving, new)]


def wait_for_slaves(ctx: UpgradeContext) -> str:
    """Master, before migrating: until no slave serves code older than NEW."""
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        return ""
    conf = ctx.settings["cluster"]
    me = presence.name
    if conf["migrate_while_serving"] or ctx.migrate_while_serving:
        old = serving_old(presence.query(table.nodes), me, ctx.new)
        names = ", ".join(r.name for r in old) or "none"
        return f"told to migrate while slaves serve the old code ({names})"

    host, probe_timeout = table.hostname(), float(conf["probe_timeout"])
    blocking: list[NodeRow] = []
    told_blind: list[str] = []

    def check(conn: Any) -> Pending | None:
        rows = table.nodes(conn)
        blind = probe.unchecked(rows, me, host)
        if blind and blind != told_blind:
            told_blind[:] = blind
            ctx.reporter.warn(f"cannot check from here whether the web servers of "
                              f"{', '.join(blind)} answer (no [cluster] probe_url reachable "
                              "from this machine): trusting their rows")
        old = serving_old(rows, me, ctx.new)
        # A row says what ivle-maint did; a web server started by hand is
        # only found by asking it.
        answering = probe.answering(rows, me, host, probe_timeout)
        blocking[:] = [*old, *(r for r, _ in answering)]
        if not old and not answering:
            return None
        texts = [describe(r) for r in old] + [f"{describe(r)}, but {text}"
                                              for r, text in answering]
        return Pending(" ".join(r.name for r in blocking), "; ".join(texts))

    timeout = float(conf["slaves_timeout"])
    try:
        waited = poll(ctx, check, step="migrate", timeout=timeout,
                      label="the slaves to stop serving the old code")
    except TimedOut as exc:
        gone = "; ".join(f"ivle-maint cluster forget {r.name} (last seen {human_age(r.age)})"
                         for r in blocking)
        raise MaintError(
            f"slaves still serve code older than {ctx.new} after {timeout:g}s ([cluster] "
            f"slaves_timeout), nothing migrated: {exc.pending.text}.  Upgrade them (their "
            "preinst stops the web server) or stop their web servers, then resume; if a node "
            f"is gone for good: {gone}; to migrate anyway: [cluster] migrate_while_serving = "
            "yes, or ivle-maint rerun --migrate-while-serving",
            resume=ctx.resume,
        ) from None
    return f"no slave serves the old code (waited {waited:.1f}s)"


def wait_for_master(ctx: UpgradeContext) -> str:
    """Slave, before starting the web server on new code: until the marker
    lists every migration this node's package ships."""
    from ..db.discovery import discover

    presence = ctx.cluster
    if presence is None or not presence.enabled or not ctx.code_is_new:
        return ""
    keys = [m.key for m in discover(ctx.migrations)]
    me = presence.name
    masters, marker, ivle_tables = presence.query(lambda conn: (
        [r for r in table.nodes(conn) if r.role != "slave" and r.name != me],
        table.applied_keys(conn), table.has_ivle_tables(conn)))
    # No master row is not "nothing to wait for" on a database that holds
    # IVLE's tables: its master may simply never have run ivle-maint yet.
    if (ctx.settings["cluster"]["coordinate"] == "auto" and marker is None and not masters
            and not ivle_tables):
        ctx.reporter.warn("the database knows no ivle-maint master and holds no IVLE tables "
                          "(no migration marker, no master in ivle_maint_nodes, no table "
                          "login): not waiting for migrations")
        return "no ivle-maint master known: did not wait"

    def check(conn: Any) -> Pending | None:
        applied = table.applied_keys(conn) or set()
        missing = [k for k in keys if k not in applied]
        if not missing:
            return None
        rows = [r for r in table.nodes(conn) if r.role != "slave" and r.name != me]
        master = "; ".join(describe(r) for r in rows) or "no master has recorded itself"
        what = f"{len(missing)} migration(s) of {ctx.new} ({', '.join(missing)})"
        return Pending(f"{len(missing)}|{' '.join(r.phase + str(r.step) for r in rows)}",
                       f"{what}; master: {master}")

    timeout = float(ctx.settings["cluster"]["master_timeout"])
    try:
        waited = poll(ctx, check, step="start-web", timeout=timeout,
                      label="the master's migrations")
    except TimedOut as exc:
        raise MaintError(
            f"the master's migrations are still missing after {timeout:g}s ([cluster] "
            f"master_timeout), web server left down: {exc.pending.text}.  Upgrade (or "
            "resume) the master, then resume here",
            resume=ctx.resume,
        ) from None
    return f"the master has applied all {len(keys)} migrations of {ctx.new} (waited {waited:.1f}s)"

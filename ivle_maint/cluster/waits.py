"""The bounded waits that keep the nodes' code, schema and jail tree in step.

IVLE's data directory (the jail template and every user's jail) lives on
the master and is shared with the slaves over NFS, so the master's jail
rebuild changes what every slave mounts.  Hence three waits:

- The master (before migrate) waits until no other node's web server
  serves code older than the target, unless told to go ahead
  ([cluster] migrate_while_serving, or --migrate-while-serving).
- The master (before rebuild-jail and remake-users) waits until every
  other web node records no jail mounted and no console running
  (wait_for_jails_free): the tree is not rewritten under a mounted jail.
  Under [cluster] unpack_together, a node that gave its upgrade up ends
  this wait at once, as it ends the migrate's: its slaves are given back.
- A slave (before start-web, new code on disk) waits until the marker
  lists every migration its own package ships AND the master has
  finished its jail template, user jails and user management server
  restart for the same version (wait_for_master): new web code never
  meets an old schema or a half-rebuilt jail tree.  A schema or master
  newer than this node's version is refused at once (newer_than_me).

A rollback (ctx.rollback: NEW is older than what the slaves serve) reads
them as such: the master's full rollback waits until no slave serves
anything but NEW (a code-only one waits for none: steps/migrate.py); a
slave waits for the master's finished rollback to NEW, not refusing the
newer master or the additive migrations a code-only rollback keeps.

Each look is one query; progress is printed when what is awaited changes
(for a slave: at each of the master's steps) and every PROGRESS_EVERY
seconds; the row in ivle_maint_nodes says "waiting" all along.  A look
that loses its connection (PostgreSQL restarted, as apt may do on the
master) reconnects within [database] wait_timeout (Presence.query).  At
the deadline the step fails with the resume command; nothing hangs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..context import Role
from ..db.discovery import discover
from ..errors import MaintError
from ..gates.text import command, ivle_maint, shown
from ..gates.waits import checkpoint
from ..versions import parse
from . import probe, table, trust
from .ages import human_age

if TYPE_CHECKING:
    from ..context import UpgradeContext
    from ..output import Reporter
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
    if row.invalid:  # the gate's reason and fix, so a timeout names them
        return shown(row.invalid)
    return f"{row.name} ({row.role}, {serving}, {where}, {seen})"


def poll(ctx: UpgradeContext, check: Callable[[Any], Pending | None], *, step: str,
         timeout: float, label: str) -> float:
    """Call check(conn) until it returns None; the seconds waited."""
    presence = ctx.cluster
    assert presence is not None, "the waits poll only a node in a cluster"
    return poll_through(presence, ctx.reporter, check, interval=float(
        ctx.settings["cluster"]["poll"]), step=step, timeout=timeout, label=label)


class Looks(Protocol):
    """What a poll needs of its link to the database: a look, and a note
    for this node's row while it waits (a ClusterLink is one)."""

    def query(self, look: Callable[[Any], Pending | None]) -> Pending | None: ...

    def waiting(self, step: str, note: str) -> None: ...

    def settle(self, timeout: float) -> None:
        """Return when another node's row may have changed, or after TIMEOUT."""


def poll_through(presence: Looks, reporter: Reporter,
                 check: Callable[[Any], Pending | None], *, interval: float, step: str,
                 timeout: float, label: str) -> float:
    """poll() through PRESENCE, every INTERVAL seconds, for a run without
    an UpgradeContext (the rollback's checks)."""
    started = time.monotonic()
    shown, shown_at = "", 0.0
    while True:
        pending = presence.query(check)  # reconnects if the server restarts
        now = time.monotonic()
        if pending is None:
            return now - started
        waited = now - started
        if pending.key != shown or now - shown_at >= PROGRESS_EVERY:
            reporter.info(f"waiting for {label}: {pending.text} "
                          f"({waited:.0f}s of {timeout:g}s)")
            shown, shown_at = pending.key, now
        reporter.progress(f"waiting for {label}", int(waited), int(timeout))
        presence.waiting(step, f"waiting for {label}: {pending.text}")
        if waited >= timeout:
            raise TimedOut(pending)
        presence.settle(min(interval, max(0.0, timeout - waited)))
        checkpoint()  # a worker told to stop unwinds here


def _older(serving: str | None, new: str) -> bool:
    """Is a service at SERVING running code older than NEW?  Unknown counts as old."""
    if serving is None:
        return False
    try:
        return bool(parse(serving) < parse(new))
    except MaintError:
        return True


def serving_old(rows: list[NodeRow], me: str, new: str, *, rollback: bool = False
                ) -> list[NodeRow]:
    """Other web nodes serving code the schema at NEW was not made for: older
    code; in a ROLLBACK (NEW older than what they serve), any but NEW."""
    stale = _other_than if rollback else _older
    return [r for r in rows if r.name != me and r.has_web and stale(r.serving, new)]


def _other_than(serving: str | None, new: str) -> bool:
    return serving is not None and not _same(serving, new)


def _unconfirmed(rows: list[NodeRow], me: str, new: str, rollback: bool) -> list[NodeRow]:
    """trust.unconfirmed_down; in a rollback an idle row of any code but NEW."""
    if not rollback:
        return trust.unconfirmed_down(rows, me, new)
    return [r for r in rows if r.name != me and r.has_web and r.serving is None
            and r.target is None and not _same(r.version, new)]


def wait_for_slaves(ctx: UpgradeContext, step: str) -> str:
    """Master, before migrating (STEP): until no slave serves code older than NEW."""
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        return ""
    conf = ctx.settings["cluster"]
    me = presence.name
    # A rollback's target is older than what the slaves serve: every other
    # version is "old" to the database it puts back.
    back = ctx.rollback is not None
    stale = f"the slaves to stop serving {ctx.old}" if back else \
        "the slaves to stop serving the old code"
    if conf["migrate_while_serving"] or ctx.migrate_while_serving or ctx.rolls:
        old = serving_old(presence.query(table.nodes), me, ctx.new, rollback=back)
        names = ", ".join(r.name for r in old) or "none"
        why = "the release rolls: migrating" if ctx.rolls else "told to migrate"
        return f"{why} while slaves serve the old code ({names})"

    host, probe_timeout = table.hostname(), float(conf["probe_timeout"])
    together = ctx.unpack_together and not back
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
        if together:  # the rows were refreshed before this upgrade began (the playbook's)
            _refuse_given_up(ctx, [r for r in rows if r.name != me and r.has_web],
                             "stops before migrating, nothing migrated",
                             f"The slaves give their sites back on {ctx.old}; fix it, then "
                             "upgrade the cluster again (this node's upgrade then resumes "
                             "where it stopped)")
        old = serving_old(rows, me, ctx.new, rollback=back)
        # A row says what ivle-maint did; a web server started by hand is
        # only found by asking it.
        answering = probe.answering(rows, me, host, probe_timeout)
        found = {r.name for r in old} | {r.name for r, _ in answering}
        # An idle row saying "down" confirms nothing (trust.py).
        unsure = [r for r in _unconfirmed(rows, me, ctx.new, back) if r.name not in found]
        blocking[:] = [*old, *(r for r, _ in answering), *unsure]
        if not blocking:
            return None
        texts = [describe(r) for r in old] + [f"{describe(r)}, but {text}"
                                              for r, text in answering] + [
            f"{describe(r)}, but its row was written while it was not upgrading ("
            f"{r.note or 'no note'}): nothing keeps its web server down" for r in unsure]
        return Pending(" ".join(r.name for r in blocking), "; ".join(texts))

    timeout = float(conf["slaves_timeout"])
    try:
        waited = poll(ctx, check, step=step, timeout=timeout, label=stale)
    except TimedOut as exc:
        gone = "; ".join(f"{ivle_maint('cluster', 'forget', r.name)} (last seen "
                         f"{human_age(r.age)})"
                         for r in blocking)
        raise MaintError(
            f"slaves still serve {_what_stale(ctx)} after {timeout:g}s ([cluster] "
            f"slaves_timeout), nothing migrated: {exc.pending.text}.  Upgrade them (their "
            f"preinst stops the web server and records it; or "
            f"{command('ivle-maint', 'cluster', 'prepare', '--to', ctx.new)} on each), then "
            f"resume; if a node "
            f"is gone for good: {gone}; to migrate anyway: [cluster] migrate_while_serving = "
            f"yes, or {ivle_maint('rerun', '--migrate-while-serving')}",
            resume=ctx.resume,
        ) from None
    gone = f"code other than {ctx.new}" if back else "the old code"
    return f"no slave serves {gone} (waited {waited:.1f}s)"


def _refuse_given_up(ctx: UpgradeContext, rows: list[NodeRow], where: str, then: str
                     ) -> None:
    """[cluster] unpack_together: a node of ROWS that failed its before-phase,
    or gave its upgrade up, is not coming: stop waiting at once."""
    lost = [(r, why) for r in rows if (why := trust.gave_up(r, ctx.new))]
    if lost:
        raise MaintError(
            f"the upgrade to {ctx.new} {where}: "
            + "; ".join(f"{r.name}: {why}" for r, why in lost) + f".  {then}",
            resume=ctx.resume)


def _what_stale(ctx: UpgradeContext) -> str:
    return f"code {'other' if ctx.rollback is not None else 'older'} than {ctx.new}"


# The master's AFTER steps change what a slave serves or mounts (schema, jail
# template, user jails, usrmgt); its row says it serves NEW once the last,
# restart-usrmgt, is done (context.serving): then they all are.


def _newer(version: str, new: str) -> bool:
    """Is VERSION newer than NEW?  An unparsable version is not."""
    try:
        return bool(parse(new) < parse(version))
    except MaintError:
        return False


def _same(a: str | None, b: str) -> bool:
    try:
        return a is not None and parse(a) == parse(b)
    except MaintError:
        return a == b


def master_finished(row: NodeRow, new: str) -> bool:
    """Has this master done every one of its AFTER steps for NEW?"""
    if row.phase == "idle":
        return _same(row.version, new)  # a finished upgrade, or installed at NEW
    return _same(row.target, new) and _same(row.serving, new)


def newer_than_me(rows: list[NodeRow], applied: set[str], keys: list[str], new: str
                  ) -> list[str]:
    """Why the master is ahead of this node at NEW: migrations newer than any
    this node ships, a master on or heading to a newer version."""
    found = []
    newest = max(keys, default="")
    extra = sorted(k for k in applied if k not in keys and k > newest)
    if extra:
        found.append(f"the database has {len(extra)} migration(s) IVLE {new} does not ship "
                     f"({', '.join(extra)})")
    for row in rows:
        ahead = [v for v in (row.version, row.target) if v and _newer(v, new)]
        if ahead:
            found.append(f"{row.name} is on or upgrading to IVLE {max(ahead)}")
    return found


def _refuse_newer(ctx: UpgradeContext, reasons: list[str]) -> MaintError:
    return MaintError(
        f"the master is ahead of this node: {'; '.join(reasons)}.  IVLE {ctx.new}'s web code "
        "would run on a newer schema, with a jail tree rebuilt for a newer IVLE, which "
        "neither release was made for: web server left down.  Upgrade this node to the "
        f"master's version; to serve {ctx.new} anyway: [cluster] serve_on_newer_schema = "
        "yes, then resume",
        resume=ctx.resume,
    )


def slaves_plan_line(ctx: UpgradeContext, rows: Sequence[NodeRow], step: str) -> str:
    """The plan's line for wait_for_slaves before STEP."""
    back = ctx.rollback is not None
    old = serving_old(list(rows), ctx.settings.node_name, ctx.new, rollback=back)
    names = ", ".join(r.name for r in old)
    if back:  # the way back is chosen at the step, from the marker then
        return (f"  {step} (a full rollback; code only waits for no slave) waits for "
                f"slaves serving other than {ctx.new}: {names or 'none now'}")
    return (f"  {step} waits for slaves serving older code: {names}" if old
            else f"  no slave serves older code: {step} would not wait")


def master_plan_line(ctx: UpgradeContext, rows: Sequence[NodeRow], step: str) -> str:
    """The plan's line for wait_for_master before STEP."""
    return (f"  {step} waits for the master's migrations; media version as the slaves "
            "agree in ivle_maint_media")


def wait_for_master(ctx: UpgradeContext, step: str) -> str:
    """Slave, before starting the web server on new code (STEP): until the marker
    lists every migration this node's package ships and every master has
    finished its AFTER steps for the same version."""
    presence = ctx.cluster
    if presence is None or not presence.enabled or not ctx.code_is_new:
        return ""
    keys = [m.key for m in discover(ctx.migrations)]
    me = presence.name
    conf = ctx.settings["cluster"]
    masters, marker, ivle_tables = presence.query(lambda conn: (
        [r for r in table.nodes(conn) if r.node_role is not Role.SLAVE and r.name != me],
        table.applied_keys(conn), table.has_ivle_tables(conn)))
    # No master row is not "nothing to wait for" on a database that holds
    # IVLE's tables: its master may simply never have run ivle-maint yet.
    if (conf["coordinate"] == "auto" and marker is None and not masters
            and not ivle_tables):
        ctx.reporter.warn("the database knows no ivle-maint master and holds no IVLE tables "
                          "(no migration marker, no master in ivle_maint_nodes, no table "
                          "login): not waiting for migrations")
        return "no ivle-maint master known: did not wait"
    if not masters:
        ctx.reporter.warn("no master has recorded itself in ivle_maint_nodes: waiting for the "
                          "migrations only; whether the master rebuilt the jail tree cannot be "
                          f"checked ({command('ivle-maint', 'cluster', 'register')} on the "
                          "master)")
    newer_warned: list[str] = []

    def check(conn: Any) -> Pending | None:
        applied = table.applied_keys(conn) or set()
        rows = [r for r in table.nodes(conn) if r.node_role is not Role.SLAVE and r.name != me]
        # A rollback starts on a newer master and, code only, keeps newer
        # (additive) migrations: its master's finished rollback is the word.
        ahead = [] if ctx.rollback is not None else newer_than_me(rows, applied, keys, ctx.new)
        if ahead and not conf["serve_on_newer_schema"]:
            raise _refuse_newer(ctx, ahead)
        if ahead and not newer_warned:
            ctx.reporter.warn(f"serving IVLE {ctx.new} on a newer master, as told ([cluster] "
                              f"serve_on_newer_schema): {'; '.join(ahead)}")
            newer_warned.extend(ahead)
        missing = [k for k in keys if k not in applied]
        busy = [r for r in rows if not master_finished(r, ctx.new) and not ahead]
        if not missing and not busy:
            return None
        # A master that failed or gave up is not coming without a person:
        # the wait ends now, not at master_timeout.
        lost = [(r, why) for r in busy if (why := trust.stopped(r, ctx.new))]
        if lost:
            raise MaintError(
                f"the master failed its {'rollback' if ctx.rollback is not None else 'upgrade'}"
                f" to {ctx.new}, web server left down: "
                + "; ".join(f"{describe(r)}: {why}" for r, why in lost)
                + ".  Resume the master (dpkg --configure -a there), then resume here",
                resume=ctx.resume)
        master = "; ".join(describe(r) for r in rows) or "no master has recorded itself"
        what = (f"{len(missing)} migration(s) of {ctx.new} ({', '.join(missing)})" if missing
                else f"the rollback to {ctx.new} (database, jail template, user jails, "
                "usrmgt restart)" if ctx.rollback is not None
                else f"the jail template, user jails and usrmgt restart for {ctx.new}")
        state = " ".join(f"{r.phase}:{r.step}" for r in rows)
        return Pending(f"{'migrations' if missing else 'steps'}|{len(missing)}|{state}",
                       f"{what}; master: {master}")

    timeout = float(conf["master_timeout"])
    try:
        waited = poll(ctx, check, step=step, timeout=timeout,
                      label="the master (migrations, jail, user jails, usrmgt)")
    except TimedOut as exc:
        what = ("the master's migrations are still missing" if exc.pending.key.startswith(
            "migrations") else f"the master has not finished its rollback to {ctx.new}"
            if ctx.rollback is not None
            else f"the master has not finished rebuilding the jails for {ctx.new}")
        raise MaintError(
            f"{what} after {timeout:g}s ([cluster] master_timeout), web server left down: "
            f"{exc.pending.text}.  Upgrade (or resume) the master, then resume here",
            resume=ctx.resume,
        ) from None
    done = f"the master has applied all {len(keys)} migrations of {ctx.new}"
    if masters or newer_warned:  # its steps done, whichever the release needed
        done += " and finished its steps (jails, user jails, usrmgt: as the release needs)"
    return f"{done} (waited {waited:.1f}s)"


def in_use(row: NodeRow) -> str:
    """What a web node holds of the jail tree, as it recorded it."""
    if row.target is None:
        return "not upgrading: its jails may be in use"
    if row.mounts is None or row.consoles is None:
        return "jails not counted: " + ("serving" if row.serving else "not yet unmounted")
    return f"{row.mounts} jail mount(s), {row.consoles} console(s)"


def jails_held(rows: list[NodeRow], me: str) -> list[NodeRow]:
    """Other web nodes whose upgrade in progress has not recorded 0 mounts and
    0 consoles.  Only an upgrade's count tells: it is taken once its jails
    are unmounted and dropped when its web server starts, while an idle
    node (down or not) may mount a jail at any moment."""
    return [r for r in rows if r.name != me and r.has_web
            and not (r.target is not None and r.mounts == 0 and r.consoles == 0)]


def wait_for_jails_free(ctx: UpgradeContext, step: str) -> str:
    """Master, before rewriting the shared jail tree (STEP): until no other web
    node has a jail of it mounted or a console running in it."""
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        return ""
    conf = ctx.settings["cluster"]
    me = presence.name
    if conf["migrate_while_serving"] or ctx.migrate_while_serving:
        held = jails_held(presence.query(table.nodes), me)
        if held:
            ctx.reporter.warn("rebuilding the shared jail tree while slaves may use it, as told "
                              "(migrate_while_serving): " + ", ".join(r.name for r in held))
        return ""
    together = ctx.unpack_together and ctx.rollback is None

    def check(conn: Any) -> Pending | None:
        rows = table.nodes(conn)
        if together:  # a slave given back on the old code frees no jail: stop, as migrate does
            _refuse_given_up(ctx, [r for r in rows if r.name != me and r.has_web],
                             "stops before rewriting the shared jail tree, jail tree left as "
                             "it was",
                             f"The slaves give their sites back on {ctx.old}; fix it, then "
                             "upgrade the cluster again (this node's upgrade then resumes "
                             "where it stopped)")
        held = jails_held(rows, me)
        if not held:
            return None
        return Pending(" ".join(f"{r.name}:{r.target}:{r.mounts}:{r.consoles}" for r in held),
                       "; ".join(f"{r.name} ({in_use(r)}; {describe(r)})"
                                 for r in held))

    timeout = float(conf["slaves_timeout"])
    try:
        waited = poll(ctx, check, step=step, timeout=timeout,
                      label="the slaves to release the shared jails")
    except TimedOut as exc:
        raise MaintError(
            f"slaves still hold jails of the shared tree after {timeout:g}s ([cluster] "
            f"slaves_timeout), jail tree left as it was: {exc.pending.text}.  Let their "
            f"upgrades run (or: {command('ivle-maint', 'cluster', 'prepare', '--to', ctx.new)} "
            f"on each; a node that is gone: {ivle_maint('cluster', 'forget', 'NAME')}), then "
            "resume",
            resume=ctx.resume,
        ) from None
    return f"no slave holds a jail of the shared tree (waited {waited:.1f}s)"


UNPACK = "unpack"  # the barrier's name in a waiting row: the before-phase is done


def wait_for_every_before_phase(ctx: UpgradeContext) -> str:
    """A web node, its before-phase done, before dpkg unpacks NEW's code
    ([cluster] unpack_together): until every other node in the cluster
    table has done its own.  A node that failed it or gave its upgrade up
    ends the wait at once: this node's preinst fails, dpkg's abort gives
    its site back on OLD, and so does every other web node's.

    A node without a web server (the master) does not wait: its new code
    serves nobody until it migrates, its unpack overlaps the slaves'
    stops as under apt-get at once, and its migrate waits for the slaves
    (wait_for_slaves), ending at once, nothing migrated, when one gave up."""
    presence = ctx.cluster
    if presence is None or not presence.enabled or not ctx.unpack_together or ctx.rollback:
        return ""  # a rollback's nodes are ordered by the other waits
    if ctx.rolls:  # the next slave's before-phase waits for this one's roll slot
        return ""
    if not ctx.settings.role.runs_web:
        return ""
    me = presence.name

    def check(conn: Any) -> Pending | None:
        rows = [r for r in table.nodes(conn) if r.name != me]
        _refuse_given_up(ctx, rows, "stops before its code is unpacked",
                         f"Every slave gives its site back on {ctx.old}, the master stops "
                         "before migrating; fix it, then upgrade the cluster again")
        behind = [r for r in rows if not trust.past_before_phase(r, ctx.new)]
        if not behind:
            return None
        return Pending(" ".join(f"{r.name}:{r.phase}:{r.step}" for r in behind),
                       "; ".join(describe(r) for r in behind))

    timeout = float(ctx.settings["cluster"]["slaves_timeout"])
    try:
        waited = poll(ctx, check, step=UNPACK, timeout=timeout,
                      label=f"every node's before-phase of {ctx.new}")
    except TimedOut as exc:
        raise MaintError(
            f"not every node did its before-phase of {ctx.new} within {timeout:g}s "
            f"([cluster] slaves_timeout), nothing unpacked: {exc.pending.text}.  This "
            f"node gives its site back on {ctx.old}; upgrade every node together (a node "
            f"that is gone: {ivle_maint('cluster', 'forget', 'NAME')})",
            resume=ctx.resume,
        ) from None
    return f"every node did its before-phase (waited {waited:.1f}s)"

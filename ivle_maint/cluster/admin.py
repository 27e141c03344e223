"""What `ivle-maint cluster` does: read the table, register, forget, check.

Functions return data; commands/cluster.py prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import liveness
from ..dpkg import package_version
from ..errors import ConfigError, MaintError
from ..gates.text import ivle_maint
from ..installed import recorded_version
from ..journal import unfinished
from ..services.init_scripts import RUNNING, control_from_settings
from ..services.maintenance_page import in_maintenance
from . import probe, roll, table, trust
from .ages import human_age
from .presence import REPORT_WAIT, Presence, coordinated, errors_as_maint, name_holder

if TYPE_CHECKING:
    from ..config import Settings
    from ..output import Reporter
    from .table import NodeRow


@dataclass
class ClusterStatus:
    nodes: list[NodeRow]
    applied: set[str] | None  # migration marker keys; None: no marker table
    media_chosen: list[tuple[str, str]] = field(default_factory=list)
    rolls: list[RollView] = field(default_factory=list)

    def slave_media(self) -> dict[str, list[str]]:
        """Media version -> the web nodes that have it."""
        found: dict[str, list[str]] = {}
        for row in self.nodes:
            if row.has_web:
                found.setdefault(row.media or "(unset)", []).append(row.name)
        return found


@dataclass(frozen=True)
class RollView:
    """An upgrade some node is on, as the roll tables say: its decision (None:
    none recorded) and the slaves out of the pool; or why they cannot say."""

    target: str
    record: roll.RollRecord | None = None
    out_of_pool: tuple[str, ...] = ()
    problem: str = ""

    def line(self) -> str:
        if self.problem:
            return f"roll to {self.target}: {self.problem}"
        if self.record is None:
            return f"roll to {self.target}: not decided yet"
        said = "rolls" if self.record.rolling else "does not roll"
        out = f"; out of the pool: {', '.join(self.out_of_pool) or 'none'}" \
            if self.record.rolling else ""
        return (f"roll to {self.target}: {said} ({self.record.why}; decided by "
                f"{self.record.decided_by}){out}")


def rolls_of(conn: Any, nodes: list[NodeRow]) -> list[RollView]:
    """The roll of each version a valid row targets."""
    views = []
    for target in sorted({r.target for r in nodes if r.target and r.invalid is None}):
        try:
            views.append(RollView(target, roll.decision(conn, target),
                                  roll.slot_holders(conn, target)))
        except (MaintError, ValueError) as exc:  # a damaged row: its line and fix
            views.append(RollView(target, problem=str(exc)))
    return views


# `cluster status` waits this long for the database, not [database] wait_timeout:
# a person is asking, and a stopped server is an answer.
STATUS_WAIT = 2.0


def read_status(settings: Settings, reporter: Reporter, *,
                own_row: bool = True) -> ClusterStatus:
    """The tables, refreshing this node's own row first (best effort; not
    with own_row=False: `plan` changes nothing, and asks neither dpkg nor an
    init script); one line and exit 1 within seconds when the database is
    unreachable."""
    presence = Presence(settings, reporter)
    try:
        try:
            conn = presence.connection(wait=STATUS_WAIT)
        except ConfigError:
            raise  # settings or ivle.conf: bad input (exit 2), not an outage
        except MaintError as exc:
            raise MaintError(f"the database is unreachable, so is the cluster table: {exc}"
                             ) from None
        if own_row:
            refresh(settings, reporter)
        with errors_as_maint(settings.ivle_conf().database["name"]):
            nodes = table.nodes(conn)
            return ClusterStatus(nodes, table.applied_keys(conn), table.media_values(conn),
                                 rolls_of(conn, nodes))
    finally:
        presence.close()


def refresh(settings: Settings, reporter: Reporter) -> None:
    """Rewrite this idle node's row as it is now: version, service, probe URL
    from the current settings (a row from install time may predate them)."""
    if not coordinated(settings):
        return
    try:
        register(settings, reporter, strict=False, note="refreshed", joining=False)
    except (MaintError, OSError) as exc:
        reporter.warn(f"this node's row not refreshed: {exc}")


def service_serving(settings: Settings, reporter: Reporter, version: str | None) -> str | None:
    """VERSION if this node's service (web, or usrmgt on a master) runs, else None."""
    which = "web" if settings.role.runs_web else "usrmgt"
    if which == "web" and in_maintenance(settings):  # Apache answers only 503
        return None
    control = control_from_settings(settings, reporter)
    running = control.status(settings["services"][which]) == RUNNING
    # Running at a version nobody recorded: table.UNKNOWN, which every reader
    # takes as older than any (it may serve old code).  It wrote "unknown",
    # which the row gate refused: the row was told as "not one ivle-maint writes".
    return (version or table.UNKNOWN) if running else None


def node_version(settings: Settings, package: str = "ivle") -> str | None:
    """The IVLE version ivle-maint recorded, else dpkg's, else None."""
    version = recorded_version(settings)
    if version:
        return version
    try:
        return package_version(package)
    except MaintError:
        return None


def register(settings: Settings, reporter: Reporter, version: str | None = None, *,
             strict: bool = True, note: str = "registered",
             replace: bool = False, joining: bool = True) -> dict[str, Any] | None:
    """Record this idle node; None when an unfinished upgrade owns the row.

    A name another machine holds is refused (ConfigError), strict or not:
    overwriting a live node's row would let the master migrate while that
    node serves.  REPLACE takes the name over (the old machine is gone).
    A second master is refused (ConfigError).  JOINING (not a refresh of
    the row): a web node older than the version a master upgrades to, or
    is on, is recorded (so the master waits for it) and refused
    (MaintError): it would serve old code on the new schema."""
    if unfinished(settings) is not None:
        return None
    version = version or node_version(settings)
    presence = Presence(settings, reporter)
    past: list[str] = []
    member = False
    try:
        row = presence.idle_row(version, service_serving(settings, reporter, version), note)
        if presence.enabled or strict:
            conn = presence.connection(wait=None if strict else REPORT_WAIT)
            with errors_as_maint(settings.ivle_conf().database["name"]):
                rows = table.nodes(conn)
            held = next((r for r in rows if r.name == row["name"]), None)
            other = name_holder(held, row) if held is not None else None
            if other and not replace:
                seen = human_age(held.age if held else None)
                raise ConfigError(
                    f"node name {row['name']!r} is held by another machine ({other}, seen "
                    f"{seen}): give this node its own [node] name, or if it replaces that "
                    f"machine: {ivle_maint('cluster', 'register', '--replace')}")
            if other:
                reporter.warn(f"taking over node name {row['name']!r} from {other} (--replace)")
            twin = trust.second_master(rows, row["name"], settings.role)
            if twin:
                raise ConfigError(twin)
            past = trust.upgrade_past(rows, row["name"], version) \
                if joining and presence.settings.role.runs_web else []
            # Not joining: a member recorded from this machine whose upgrade
            # to the version under way was given up (a playbook run again).
            member = held is not None and other is None and any(
                trust.gave_up(held, r.target) for r in rows if r.target)
        presence.write(row, strict=strict)
    except ConfigError:
        raise
    except MaintError as exc:
        if strict:
            raise
        reporter.warn(f"cluster table not updated: {exc}")
        return None
    finally:
        presence.close()
    if version is None and row["serving"] == table.UNKNOWN:
        given = ivle_maint("cluster", "register", "--version", "VERSION")
        reporter.warn(f"{row['name']}: IVLE's version here is unknown (none recorded by "
                      "ivle-maint, no package 'ivle' installed): its row says it serves an "
                      "unknown version, which a master upgrading the cluster waits for; "
                      f"give it: {given}")
    if past and member:
        reporter.warn(f"{row['name']} at IVLE {version or 'unknown'} while "
                      f"{'; '.join(past)}: upgrade it (recorded: the master waits for it)")
    elif past:
        raise MaintError(
            f"{row['name']} at IVLE {version or 'unknown'} joins the cluster while "
            f"{'; '.join(past)}: its web server would serve old code on the new schema; "
            "recorded so the master waits for it: install the master's version here, "
            "then register again")
    return row


def record_serving(settings: Settings, reporter: Reporter) -> str | None:
    """After this node's own services command: its row says what runs now.

    A web server brought up by hand during an upgrade runs code loaded
    before the upgrade finished: recorded as the old version, so the
    master does not migrate under it.  Best effort, like every report."""
    if not coordinated(settings):
        return None
    try:
        journal = unfinished(settings)
    except MaintError:
        journal = None
    version = journal.old if journal else node_version(settings)
    serving = service_serving(settings, reporter, version)
    presence = Presence(settings, reporter)
    try:
        conn = presence.connection(wait=REPORT_WAIT)
        with errors_as_maint(settings.ivle_conf().database["name"]):
            known = table.set_serving(conn, presence.name, serving)
        if not known and journal is None:
            presence.write(presence.idle_row(version, serving, "recorded by ivle-maint services"))
    except MaintError as exc:
        reporter.warn(f"cluster table not updated: {exc}")
    finally:
        presence.close()
    return serving


def forget(settings: Settings, reporter: Reporter, name: str, *, force: bool = False) -> bool:
    """Delete NAME's row, unless something says NAME is alive (trust.forget_refusals):
    then only with FORCE, which says what it means."""
    presence = Presence(settings, reporter)
    try:
        conn = presence.connection()
        with errors_as_maint(settings.ivle_conf().database["name"]):
            row = next((r for r in table.nodes(conn) if r.name == name), None)
        if row is None:
            return False
        reasons = trust.forget_refusals(row, seen_of(settings, row))
        if reasons and not force:
            raise MaintError(f"{name} looks alive: {'; '.join(reasons)}; if it is really gone: "
                             f"{ivle_maint('cluster', 'forget', '--force', name)}")
        if reasons:
            reporter.warn(f"forgetting {name} anyway (--force) although {'; '.join(reasons)}: "
                          f"{trust.forget_meaning(name)}")
        elif row.has_web and (row.mounts is None or row.consoles is None):
            reporter.warn(f"{name}'s jail mounts and consoles were never counted (it was not "
                          "upgrading): make sure it has no jail of the shared tree mounted "
                          "before the master's next upgrade")
        with errors_as_maint(settings.ivle_conf().database["name"]):
            return table.forget(conn, name)
    finally:
        presence.close()


def forget_roll(settings: Settings, reporter: Reporter, version: str) -> bool:
    """Drop the cluster's decision whether the upgrade to VERSION rolls: the
    next node whose upgrade begins decides again.  False when none stood."""
    presence = Presence(settings, reporter)
    try:
        conn = presence.connection()
        with errors_as_maint(settings.ivle_conf().database["name"]):
            return roll.forget(conn, version)
    finally:
        presence.close()


def seen_of(settings: Settings, row: NodeRow) -> trust.Seen:
    """What this node sees of ROW's node: its runner, its web server."""
    judged = trust.runner(row)
    answers = None
    if row.has_web and probe.checkable(row, table.hostname()):
        answers = probe.ask(row.probe_url or "",
                            float(settings["cluster"]["probe_timeout"])).serving
    return trust.Seen(judged.verdict if judged else None, answers)


def problems(status: ClusterStatus, expect: str, shipped: list[str]) -> list[str]:
    """Why the cluster is not (yet) every node on EXPECT, up, with one media version."""
    found = []
    if not status.nodes:
        found.append("no node has recorded itself in the cluster table")
    for row in status.nodes:
        if row.version != expect:
            found.append(f"{row.name} has {row.version or 'no recorded version'}, not {expect}")
        if row.phase != "idle":
            found.append(f"{row.name} is {row.phase}" + (f" at {row.step}" if row.step else "")
                         + (f": {row.note}" if row.note else ""))
        if row.serving != expect:
            what = "web server" if row.has_web else "user management server"
            found.append(f"{row.name}'s {what} "
                         + (f"serves {row.serving}" if row.serving else "is down"))
    masters = [r.name for r in status.nodes if trust.is_master(r)]
    if len(masters) > 1:
        found.append(f"more than one master: {', '.join(masters)} (one master per database)")
    for row in status.nodes:
        judged = trust.runner(row)
        if judged is not None and judged.verdict is liveness.Verdict.DEAD:
            found.append(f"{row.name}'s ivle-maint exited while {row.phase}: {judged.text}")
    media = status.slave_media()
    if len(media) > 1:
        found.append("media versions differ: " + "; ".join(
            f"{value} on {', '.join(names)}" for value, names in sorted(media.items())))
    missing = [k for k in shipped if k not in (status.applied or set())]
    if missing:
        found.append(f"migrations not applied: {', '.join(missing)}")
    return found

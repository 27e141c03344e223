"""What `ivle-maint cluster` does: read the table, register, forget, check.

Functions return data; commands/cluster.py prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..dpkg import package_version
from ..errors import ConfigError, MaintError
from ..installed import recorded_version
from ..journal import unfinished
from ..steps.maintenance import in_maintenance
from ..steps.services import RUNNING, control_from_settings
from . import table
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

    def slave_media(self) -> dict[str, list[str]]:
        """Media version -> the web nodes that have it."""
        found: dict[str, list[str]] = {}
        for row in self.nodes:
            if row.has_web:
                found.setdefault(row.media or "(unset)", []).append(row.name)
        return found


def read_status(settings: Settings, reporter: Reporter) -> ClusterStatus:
    presence = Presence(settings, reporter)
    try:
        conn = presence.connection()
        with errors_as_maint(settings.ivle_conf().database["name"]):
            return ClusterStatus(table.nodes(conn), table.applied_keys(conn),
                                 table.media_values(conn))
    finally:
        presence.close()


def service_serving(settings: Settings, reporter: Reporter, version: str | None) -> str | None:
    """VERSION if this node's service (web, or usrmgt on a master) runs, else None."""
    which = "usrmgt" if settings.role == "master" else "web"
    if which == "web" and in_maintenance(settings):  # Apache answers only 503
        return None
    control = control_from_settings(settings, reporter)
    running = control.status(settings["services"][which]) == RUNNING
    return (version or "unknown") if running else None


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
             replace: bool = False) -> dict[str, Any] | None:
    """Record this idle node; None when an unfinished upgrade owns the row.

    A name another machine holds is refused (ConfigError), strict or not:
    overwriting a live node's row would let the master migrate while that
    node serves.  REPLACE takes the name over (the old machine is gone)."""
    if unfinished(settings) is not None:
        return None
    version = version or node_version(settings)
    presence = Presence(settings, reporter)
    try:
        row = presence.idle_row(version, service_serving(settings, reporter, version), note)
        if presence.enabled or strict:
            conn = presence.connection(wait=None if strict else REPORT_WAIT)
            with errors_as_maint(settings.ivle_conf().database["name"]):
                held = next((r for r in table.nodes(conn) if r.name == row["name"]), None)
            other = name_holder(held, row) if held is not None else None
            if other and not replace:
                seen = human_age(held.age if held else None)
                raise ConfigError(
                    f"node name {row['name']!r} is held by another machine ({other}, seen "
                    f"{seen}): give this node its own [node] name, or if it replaces that "
                    "machine: ivle-maint cluster register --replace")
            if other:
                reporter.warn(f"taking over node name {row['name']!r} from {other} (--replace)")
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
    return row


# A node upgrading that reported within this many seconds is probably alive.
RECENT = 600.0


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
    """Delete NAME's row; a node seen recently in the middle of an upgrade
    only with FORCE (its next report would bring the row back half-known)."""
    presence = Presence(settings, reporter)
    try:
        conn = presence.connection()
        with errors_as_maint(settings.ivle_conf().database["name"]):
            row = next((r for r in table.nodes(conn) if r.name == name), None)
            if row is None:
                return False
            busy = row.phase != "idle" and (row.age is None or row.age < RECENT)
            if busy:
                what = (f"{name} was seen {human_age(row.age)} in the middle of an upgrade "
                        f"({row.phase}" + (f" at {row.step}" if row.step else "") + ")")
                if not force:
                    raise MaintError(f"{what}: it looks alive; if it is really gone: "
                                     f"ivle-maint cluster forget --force {name}")
                reporter.warn(f"{what}; forgetting it anyway (--force)")
            return table.forget(conn, name)
    finally:
        presence.close()


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
    media = status.slave_media()
    if len(media) > 1:
        found.append("media versions differ: " + "; ".join(
            f"{value} on {', '.join(names)}" for value, names in sorted(media.items())))
    missing = [k for k in shipped if k not in (status.applied or set())]
    if missing:
        found.append(f"migrations not applied: {', '.join(missing)}")
    return found

"""One media version for every slave, agreed through ivle_maint_media.

Alone, each slave derives the value from the version being installed and
its own record (media/version.py): fresh slaves that went through the same
upgrades compute the same value.  Histories can differ, though: a slave
added later, one whose state was lost, one reinstalled alone.  So a
coordinated slave asks the database first:

1. this upgrade already chose a value (a rerun): that value;
2. a value was chosen for VERSION and this is an upgrade from another
   version, or the newest value is not the one this slave serves: another
   slave got there first; take it.  An upgrading slave whose ivle.conf
   already holds that value (pushed by configuration management) agrees
   with the cluster: it is no reuse;
3. otherwise (first slave of this round; for a reinstall the value it
   serves is the newest): the next value by the usual rule, counting the
   values every node used, claimed by an INSERT; if another slave claimed
   it at the same moment, the newest value, as in 2.  A reinstall that
   claims a new value while other slaves, not reinstalling, keep the old
   one is told so at once: the media versions will differ until they
   reinstall too.

The choice goes into this node's record under the upgrade's identity
before ivle.conf is touched, so the media step then writes exactly it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import MaintError
from ..media.version import Record, next_value, plan_media_version, reinstall_number
from . import table

if TYPE_CHECKING:
    from ..context import UpgradeContext


def _latest(values: list[tuple[str, str]], version: str) -> str | None:
    """The value chosen last for VERSION: by the order next_value numbers
    them (BASE, BASE.r2, ...), never by the server's chosen_at (gates.clock:
    its clock may have been set back between two claims); a value of
    another form (written by hand) counts as older, by the listed order."""
    chosen = [(reinstall_number(version, value) or 0, i, value)
              for i, (value, for_version) in enumerate(values) if for_version == version]
    return max(chosen)[2] if chosen else None


def _warn_alone(ctx: UpgradeContext, conn: Any, me: str, current: str | None,
                chosen: str) -> None:
    """A reinstall's new value: say which slaves keep the old one."""
    others = [r.name for r in table.nodes(conn)
              if r.has_web and r.name != me and r.media == current and r.target != ctx.new]
    if others:
        ctx.reporter.warn(
            f"this reinstall of {ctx.new} changes the media version {current} -> {chosen} "
            f"here only: {', '.join(others)} keep {current}, so the media versions differ "
            f"until they reinstall {ctx.new} too")


def coordinates(ctx: UpgradeContext) -> bool:
    """Will agree() ask the cluster (and maybe claim a value) for this upgrade?"""
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        return False
    settings = ctx.settings
    current = plan_media_version(settings.ivle_conf_dir / "ivle.conf",
                                 settings.path_of("state")).current
    return current is not None or bool(settings["media"]["force"])


def check_claim(ctx: UpgradeContext) -> None:
    """The preflight's proof for agree(): the claim's INSERT, rolled back."""
    if ctx.cluster is None or not coordinates(ctx):
        return
    why = ctx.cluster.query(table.why_no_claim)
    if why:
        raise MaintError(f"database {ctx.settings.ivle_conf().database['name']}: {why}")


def agree(ctx: UpgradeContext) -> str | None:
    """The cluster's media version for this upgrade, recorded locally; None
    when this node does not coordinate or leaves the value alone."""
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        return None
    settings = ctx.settings
    state = settings.path_of("state")
    current = plan_media_version(settings.ivle_conf_dir / "ivle.conf", state).current
    if current is None and not settings["media"]["force"]:
        return None
    record = Record.load(state)
    mine = [e.value for e in record.entries if e.upgrade == ctx.upgrade_id]
    if mine:
        return mine[-1]

    def choose(conn: Any) -> str:
        # Run again whole after a lost connection: a claim that was
        # committed is then the newest value, taken as in rule 2.
        for _ in range(3):  # a lost race is followed by a plain read
            values = table.media_values(conn)
            latest = _latest(values, ctx.new)
            if latest is not None and (latest != current or ctx.old != ctx.new):
                return latest
            used = record.used | {v for v, _ in values} | ({current} if current else set())
            candidate = next_value(ctx.new, used)
            if table.claim_media(conn, candidate, ctx.new, presence.name):
                if ctx.old == ctx.new:
                    _warn_alone(ctx, conn, presence.name, current, candidate)
                return candidate
        raise MaintError("could not agree on a media version with the other nodes; run again")

    latest = presence.query(choose)
    record.add(latest, ctx.new, ctx.upgrade_id)
    record.save()
    return latest

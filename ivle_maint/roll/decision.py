"""The cluster's one decision: does OLD -> NEW roll?

Every node must agree: a slave that rolls (leaves the pool, upgrades,
comes back) while the master waits for every slave to stop, as IVLE's
procedure has it, would wait out its timeout.  So the first node whose
upgrade begins decides (choice.choose on its facts) and records the
decision in ivle_maint_rolls (cluster/roll.py: an INSERT that the first
one wins); every other node follows the record, or refuses before
anything stops when its own setting or facts forbid what the record says.

settle() is the preflight's (the before-phase, site up); attach() is how
every later run (the after-phase, a rerun) learns the decision; facts()
and plan_line() are `ivle-maint plan`'s, which records nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import release_needs
from ..cluster import roll as records
from ..cluster import table
from ..db import migrations
from ..db.migration_class import release_class
from ..errors import MaintError
from ..gates.text import ivle_maint
from ..pool import answer
from .choice import ALWAYS, NEVER, Choice, Facts, choose, refuse_unless_allowed

if TYPE_CHECKING:
    from ..context import UpgradeContext


def _source(ctx: UpgradeContext) -> str:
    return ctx.options.rolling_from if ctx.options.rolling else "[cluster] rolling"


def facts(ctx: UpgradeContext, rows: list[table.NodeRow] | None) -> Facts:
    """The rule's facts for this upgrade; ROWS: the cluster table's (None:
    not coordinated)."""
    mode = ctx.rolling
    if mode == NEVER or rows is None or ctx.rollback is not None:
        return Facts(mode, coordinated=rows is not None, web_nodes=0, pending=0,
                     release_class=None, rollback=ctx.rollback is not None,
                     mode_from=_source(ctx))
    web = sum(1 for r in rows if r.has_web and r.invalid is None and r.serving is not None)
    unseen = "" if not ctx.settings.role.runs_web or answer.conf_enabled(ctx.settings) else (
        f"this web node's pool answer ({answer.URL}) is not served: no balancer could see it "
        f"leave ({answer.conf_path(ctx.settings)}: a2enconf {answer.CONF_NAME})")
    pending, cls, deciding, unknown = _release_class(ctx)
    needs = release_needs.of(ctx)
    return Facts(mode, coordinated=True, web_nodes=web, pending=pending, release_class=cls,
                 deciding=deciding, unknown_why=unknown, jail=needs.jail,
                 jail_why=needs.reason(release_needs.JAIL), mode_from=_source(ctx),
                 out_of_pool_why=unseen, batch=int(ctx.settings["cluster"]["roll_batch"]))


def _release_class(ctx: UpgradeContext) -> tuple[int, str | None, str, str]:
    """(pending migrations, their class or None, what decided it, why unknown)."""
    if ctx.new_migrations is None and ctx.migrations_dir is None and not ctx.code_is_new:
        # [paths] migrations are OLD's files until the unpack: "none pending"
        # would be said of a release whose migrations nobody has read.
        return 1, None, "", (f"{ctx.new}'s migrations are not known before it is unpacked "
                             "(its preinst carries none: dh_ivle_maint's manifest)")
    try:
        plan = migrations.status_or_plan(
            ctx.settings, migrations_dir=ctx.preflight_migrations,
            accept_changed=ctx.accept_changed, allow_out_of_order=ctx.allow_out_of_order,
            accept_class=ctx.accept_class, reporter=ctx.reporter)
    except MaintError as exc:
        return 1, None, "", str(exc)
    if isinstance(plan, migrations.Status):
        return len(plan.pending), None, "", "the database has no migration marker yet"
    if plan.problems:
        return len(plan.pending), None, "", plan.problems[0]
    if not plan.classes:
        return 0, None, "", ""
    top, deciding = release_class(plan.classes)
    return len(plan.pending), top, deciding[0].line().strip(), ""


def _rows(ctx: UpgradeContext) -> list[table.NodeRow] | None:
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        return None
    return presence.query(table.nodes)


def _by_ivles_procedure(ctx: UpgradeContext) -> str:
    """How a person takes the cluster off a recorded roll."""
    return (f"upgrade the whole cluster by IVLE's procedure: "
            f"{ivle_maint('cluster', 'forget-roll', ctx.new)}, then --rolling never on every "
            "node")


def _upgrading_to(conn: Any, new: str, me: str) -> bool:
    """Does another node's row say it is upgrading to NEW now?"""
    return any(r.target == new and r.name != me and r.phase != "idle"
               for r in table.nodes(conn))


def _standing(record: records.RollRecord, me: str) -> Choice:
    by = "" if record.decided_by == me else f"; decided by {record.decided_by}"
    return Choice(record.rolling, record.why + by)


def settle(ctx: UpgradeContext) -> Choice:
    """The preflight's: this node's choice, made the cluster's if it is the
    first, else the record's; MaintError (nothing stopped) when this node
    may not do what the record says."""
    if ctx.roll_choice is not None:
        return ctx.roll_choice
    mode = ctx.rolling
    mine = choose(facts(ctx, _rows(ctx)))
    presence = ctx.cluster
    if presence is None or not presence.enabled:
        refuse_unless_allowed(mode, mine, _source(ctx))
        ctx.roll_choice = mine
        return mine

    unrecordable = presence.query(records.why_no_roll)
    if unrecordable:  # then no node can record one: each keeps IVLE's procedure
        choice = Choice(False, f"no decision can be recorded for the cluster: {unrecordable}")
        if mine.rolling:
            ctx.reporter.warn(f"the release could roll, but {choice.why}")
        refuse_unless_allowed(mode, choice, _source(ctx))
        ctx.roll_choice = choice
        return choice

    def decide(conn: Any) -> records.RollRecord:
        record = records.decide_once(conn, target=ctx.new, old=ctx.old, rolling=mine.rolling,
                                     why=mine.why, by=presence.name)
        if record.old != ctx.old and not _upgrading_to(conn, ctx.new, presence.name):
            # An earlier upgrade to NEW, from another version, long over: its own.
            records.forget(conn, ctx.new)
            record = records.decide_once(conn, target=ctx.new, old=ctx.old,
                                         rolling=mine.rolling, why=mine.why, by=presence.name)
        return record

    record = presence.query(decide)
    standing = _standing(record, presence.name)
    if record.old != ctx.old and record.rolling:
        raise MaintError(f"the cluster rolls {record.old} -> {ctx.new} ({standing.why}), but "
                         f"this node upgrades from {ctx.old}: a roll takes every slave from "
                         "one version; nothing was stopped: finish that roll first, or "
                         f"{_by_ivles_procedure(ctx)}")
    if record.rolling and not mine.rolling:
        again = "set [cluster] rolling = auto here" if mode == NEVER else "fix that here"
        raise MaintError(f"the cluster rolls {ctx.old} -> {ctx.new} ({standing.why}), but "
                         f"this node does not: {mine.why}; nothing was stopped: {again}, or "
                         f"{_by_ivles_procedure(ctx)}")
    refuse_unless_allowed(mode, standing, _source(ctx))
    ctx.reporter.info(f"rolling: {standing}")  # said before anything stops
    ctx.roll_choice = standing
    return standing


def attach(ctx: UpgradeContext) -> Choice:
    """The decision for a run that did not settle it (the after-phase, a
    rerun): the record's, else no roll."""
    if ctx.roll_choice is not None:
        return ctx.roll_choice
    presence = ctx.cluster
    choice = Choice(False, "not coordinated")
    if presence is not None and presence.enabled:
        record = presence.query(lambda conn: records.decision(conn, ctx.new))
        if record is not None and record.old == ctx.old:
            choice = _standing(record, presence.name)
        else:
            choice = Choice(False, f"no roll was decided for {ctx.old} -> {ctx.new}")
    ctx.roll_choice = choice
    return choice


def check_roll(ctx: UpgradeContext) -> None:
    """The preflight's Check (migrate's on the master, leave-pool's on a
    slave): settled once for the run."""
    settle(ctx)


def plan_line(ctx: UpgradeContext, rows: list[table.NodeRow]) -> str:
    """`ivle-maint plan`'s line for a coordinated node: what it would
    choose from the cluster table's ROWS; records nothing."""
    choice = choose(facts(ctx, rows))
    refused = ctx.rolling == ALWAYS and not choice.rolling
    return f"rolling: {choice}" + (f" (refused: {_source(ctx)} = always)" if refused else "")

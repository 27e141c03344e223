"""ivle-maint cluster status | register | refresh | forget | forget-roll | prepare: the
nodes together."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import MaintError
from ..gates import text
from ..gates.text import shown
from . import Context, checked_version

ORDER = 15

DESCRIPTION = """\
The nodes of one IVLE site coordinate their upgrades through IVLE's
database: each records its role, version, phase and media version in the
table ivle_maint_nodes.  The master migrates only once no slave serves
the old code, and rebuilds the shared jail tree only once no slave has a
jail mounted or a console running; a slave starts its web server on new
code only once the master has applied its migrations, rebuilt the jail
template and the user jails and restarted usrmgt.  See [cluster] in
'ivle-maint settings --spec' and /usr/share/doc/ivle-maint/clusters.md."""


def register(sub: Any) -> None:
    parser = sub.add_parser("cluster", help="every node's version and phase; cluster upgrades",
                            description=DESCRIPTION)
    actions = parser.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)

    status = actions.add_parser(
        "status", help="show every node: role, version, phase, media version, last seen",
        description="Show the cluster table, after refreshing this node's own row (its "
        "version, service and probe URL as they are now); a node whose ivle-maint exited "
        "mid-run and more than one master are shown.  An unreachable database is one line "
        "and exit status 1 within seconds.")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    status.add_argument("--expect", metavar="VERSION",
                        help="exit 1 unless every node is idle on VERSION with its service "
                        "up (a web server is asked at its [cluster] probe_url where this "
                        "machine can reach it), the slaves share one media version and this "
                        "node's migrations are applied")
    status.set_defaults(func=cmd_status)

    reg = actions.add_parser(
        "register", help="record this node (idle) in the cluster table",
        description="Record this node, its installed version and whether its service runs.  "
        "Every upgrade does this too; run it once on each node of a new cluster so the "
        "others know it before its first upgrade.  A name another machine holds (its "
        "machine id, [node] machine_id) is refused with exit status 2 unless --replace.")
    reg.add_argument("--version", metavar="VERSION",
                     help="the installed IVLE version (default: ivle-maint's record, then dpkg)")
    reg.add_argument("--replace", action="store_true",
                     help="take over a name another machine holds (that machine is gone)")
    reg.set_defaults(func=cmd_register)

    refresh = actions.add_parser(
        "refresh", help="rewrite this node's row as it is now (run at boot)",
        description="Rewrite this node's row in the cluster table as it is now: its version, "
        "whether its service runs, its probe URL.  ivle-maint-refresh.service runs it at "
        "boot once the web server has started, so a row written before a reboot (or at "
        "install time) never tells the master a slave is down while it serves.  Waits for "
        "the database up to [database] wait_timeout; an unfinished upgrade keeps its own "
        "row; a node outside the cluster ([cluster] coordinate) has nothing to do.",
    )
    refresh.set_defaults(func=cmd_refresh)

    forget = actions.add_parser("forget", help="remove a node that is gone from the table",
                                description="Remove NAME's row (a decommissioned node).  "
                                "Refused without --force while anything says NAME is alive: "
                                "its ivle-maint runs, it was seen in the last 10 minutes in "
                                "the middle of an upgrade, its web server answers (or its "
                                "row says it serves), or its row counts jail mounts or "
                                "consoles.")
    forget.add_argument("name", metavar="NAME",
                        help="the node's name as 'cluster status' shows it")
    forget.add_argument("--force", action="store_true",
                        help="forget it even so: the master then stops waiting for it")
    forget.set_defaults(func=cmd_forget)

    forget_roll = actions.add_parser(
        "forget-roll", help="drop the cluster's decision whether the upgrade to VERSION rolls",
        description="Drop the decision the first node recorded (ivle_maint_rolls) whether "
        "the upgrade to VERSION rolls, one slave at a time behind the balancer: the next "
        "node whose upgrade to VERSION begins decides again, by its own [cluster] rolling.  "
        "A slave out of the pool keeps its roll slot until its upgrade is done.")
    forget_roll.add_argument("version", metavar="VERSION", help="the version upgraded to")
    forget_roll.set_defaults(func=cmd_forget_roll)

    prepare = actions.add_parser(
        "prepare", help="run this node's before-phase now (web server down) for NEW",
        description="Run the steps before the code changes (a slave: stop the web server "
        "and consoles, unmount jails) for the upgrade to NEW, as IVLE's preinst would; the "
        "package's own preinst then finds them done.  Nothing to do on a node already at NEW.")
    prepare.add_argument("--to", dest="new", metavar="NEW", required=True,
                         help="the version about to be installed")
    prepare.add_argument("--from", dest="old", metavar="OLD",
                         help="the installed version (default: ivle-maint's record, then dpkg)")
    prepare.add_argument("--abandon", action="store_true",
                         help="undo an unfinished before-phase to NEW instead, as dpkg's "
                         "abort-upgrade does (start the web server again on the old code)")
    prepare.set_defaults(func=cmd_prepare)


def cmd_status(ctx: Context) -> int:
    """Print the table (or JSON); --expect turns it into a check."""
    from ..cluster import probe, table, trust
    from ..cluster.admin import problems, read_status
    from ..db.discovery import discover

    status = read_status(ctx.settings, ctx.reporter)
    paused = probe.in_maintenance(status.nodes, table.hostname(),
                                  float(ctx.settings["cluster"]["probe_timeout"]))
    found: list[str] = []
    if ctx.args.expect:
        directory = ctx.settings.path_of("migrations")
        shipped = [m.key for m in discover(directory)] if directory.is_dir() else []
        found = problems(status, ctx.args.expect, shipped) + not_answering(ctx, status)
    runners = {row.name: trust.runner(row) for row in status.nodes}
    if ctx.args.json:
        states = {name: judged.verdict.value if judged else None
                  for name, judged in runners.items()}
        rows = [{**row.__dict__, "last_seen": row.last_seen.isoformat() if row.last_seen
                 else None, "maintenance": row.name in paused,
                 "runner_state": states[row.name]} for row in status.nodes]
        rolls = [{"target": v.target, "rolling": v.record.rolling if v.record else None,
                  "why": v.record.why if v.record else None,
                  "decided_by": v.record.decided_by if v.record else None,
                  "out_of_pool": list(v.out_of_pool), "problem": v.problem or None}
                 for v in status.rolls]
        doc = {"nodes": rows, "applied": sorted(status.applied or ()),
               "media_chosen": status.media_chosen, "slave_media": status.slave_media(),
               "rolls": rolls, "problems": found}
        print(json.dumps(doc, indent=1))
    else:
        _print_table(status, paused, runners)
        for view in status.rolls:
            print(shown(view.line()))
        for problem in found:
            print(f"problem: {shown(problem)}")
    sys.stdout.flush()
    if found:
        raise MaintError(f"the cluster is not on {ctx.args.expect}: {len(found)} problem(s)")
    return 0


def not_answering(ctx: Context, status: Any) -> list[str]:
    """Web nodes whose row says they serve but whose web server does not answer."""
    from ..cluster import probe, table

    host, timeout = table.hostname(), float(ctx.settings["cluster"]["probe_timeout"])
    found = []
    for row in status.nodes:
        if row.has_web and row.serving and probe.checkable(row, host):
            answer = probe.ask(row.probe_url, timeout)
            if not answer.serving:
                found.append(f"{row.name}'s row says it serves {row.serving}, but "
                             f"{answer.text}")
    return found


def _phase(row: Any, judged: Any) -> str:
    """The PHASE column: a run whose ivle-maint exited says so."""
    from ..liveness import Verdict

    text = row.phase + (f" ({row.step})" if row.step else "")
    if row.rollback and row.target:  # an administrator sees a rollback as one
        text = f"rollback {row.rollback} -> {row.target}: {text}"
    return f"exited while {text}" if judged is not None and judged.verdict is Verdict.DEAD \
        else text


def _print_table(status: Any, paused: frozenset[str] | set[str] = frozenset(),
                 runners: dict[str, Any] | None = None) -> None:
    from ..cluster import trust
    from ..cluster.ages import human_age
    from ..liveness import Verdict

    runners = runners or {}

    if not status.nodes:
        print(f"no node has recorded itself yet ({text.ivle_maint('cluster', 'register')})")
        return
    head = ("NAME", "ROLE", "VERSION", "SERVING", "TARGET", "PHASE", "MEDIA", "LAST SEEN", "HOST")
    # A down node answering ivle-maint's maintenance page says so.
    # Every field was written by a node (or by whoever can write the
    # table): each goes through gates.text here, so none ends a line.
    rows = [tuple(shown(x) for x in (
                r.name, r.role, r.version or "-",
                r.serving or ("maintenance" if r.name in paused else "down"), r.target or "-",
                _phase(r, runners.get(r.name)), r.media or "-", human_age(r.age), r.host))
            for r in status.nodes]  # fmt: skip
    widths = [max(text.width(x) for x in col) for col in zip(head, *rows, strict=True)]
    for line in (head, *rows):
        print("  ".join(text.ljust(x, w) for x, w in zip(line, widths, strict=True)).rstrip())
    for r in status.nodes:
        name = shown(r.name)
        if r.invalid:  # table.nodes' gate refused it: why, and the fix
            print(shown(r.invalid))
        if r.note and r.phase != "idle":
            print(f"{name}: {shown(r.note)}")
        judged = runners.get(r.name)
        if judged is not None and judged.verdict is Verdict.DEAD:
            print(f"{name}: its ivle-maint exited ({shown(judged.text)}): resume there with "
                  f"{text.command('ivle-maint', 'rerun')}")  # its settings are its own
        elif judged is not None and judged.verdict is Verdict.UNKNOWABLE:
            print(f"{name}: whether its ivle-maint runs cannot be told from here: "
                  f"{shown(judged.text)}")
    masters = [r for r in status.nodes if trust.is_master(r)]
    if len(masters) > 1:
        print("MORE THAN ONE MASTER: "
              + ", ".join(f"{shown(r.name)} on {shown(r.host)}" for r in masters)
              + ": one master per database; forget the one that is not: "
              + text.ivle_maint("cluster", "forget", "NAME"))
    media = status.slave_media()
    if len(media) == 1:
        value, names = next(iter(media.items()))
        print(f"media version: {shown(value)} on every slave ({len(names)})")
    elif media:
        print("media versions DIFFER: " + "; ".join(
            f"{shown(v)} on {', '.join(shown(x) for x in n)}" for v, n in sorted(media.items())))
    print(f"migrations recorded: {len(status.applied or ())}")


def cmd_register(ctx: Context) -> int:
    from ..cluster.admin import register as record

    checked_version(ctx.args.version, "cluster register --version")
    row = record(ctx.settings, ctx.reporter, ctx.args.version, replace=ctx.args.replace)
    if row is None:
        ctx.reporter.info("an upgrade is unfinished here; its runs keep this node's row")
    else:
        ctx.reporter.info(f"recorded {row['name']} ({row['role']}): version "
                          f"{row['version'] or 'unknown'}, service {_serving(row)}")
    return 0


def cmd_refresh(ctx: Context) -> int:
    from ..cluster.admin import register as record
    from ..cluster.presence import coordinated

    if not coordinated(ctx.settings):
        ctx.reporter.info("this node takes no part in a cluster ([cluster] coordinate): "
                          "nothing to refresh")
        return 0
    row = record(ctx.settings, ctx.reporter, note="refreshed", joining=False)
    if row is None:
        ctx.reporter.info("an upgrade is unfinished here; its runs keep this node's row")
    else:
        ctx.reporter.info(f"refreshed {row['name']} ({row['role']}): version "
                          f"{row['version'] or 'unknown'}, service {_serving(row)}")
    return 0


def _serving(row: dict[str, Any]) -> str:
    from ..cluster.table import UNKNOWN

    serving = row["serving"]
    return "down" if serving is None else "running an unknown version" \
        if serving == UNKNOWN else str(serving)


def cmd_forget(ctx: Context) -> int:
    from ..cluster.admin import forget

    if not forget(ctx.settings, ctx.reporter, ctx.args.name, force=ctx.args.force):
        raise MaintError(f"no node named {ctx.args.name!r} in the cluster table")
    ctx.reporter.info(f"forgot node {ctx.args.name}")
    return 0


def cmd_forget_roll(ctx: Context) -> int:
    from ..cluster.admin import forget_roll

    checked_version(ctx.args.version, "cluster forget-roll")
    if not forget_roll(ctx.settings, ctx.reporter, ctx.args.version):
        raise MaintError(f"no roll decided for {ctx.args.version} in the cluster table")
    ctx.reporter.info(f"forgot the roll decision for {ctx.args.version}")
    return 0


def cmd_prepare(ctx: Context) -> int:
    """The before-phase of OLD -> NEW, unless this node is already at NEW."""
    from ..cluster.admin import node_version
    from ..procedure import BEFORE, steps_for
    from ..upgrade import UpgradeContext, run_phases, unfinished_matching

    args, settings = ctx.args, ctx.settings
    checked_version(args.old, "cluster prepare --from")
    checked_version(args.new, "cluster prepare --to")
    pending = unfinished_matching(settings, new=args.new)
    if args.abandon:
        return _abandon(ctx, pending)
    before = [s.name for s in steps_for(settings.role, [BEFORE])]
    if pending and all(pending[0].is_done(name) for name in before):
        # Already down (or further: a failed after-phase); dpkg finishes it.
        ctx.reporter.info(f"the before-phase of {pending[0].old} -> {args.new} is done")
        return 0
    old = args.old or (pending[0].old if pending else node_version(settings))
    if not old:
        raise MaintError("no installed version recorded; give it with --from OLD")
    if old == args.new and not pending:
        ctx.reporter.info(f"already at {args.new}: nothing to do")
        return 0
    up = UpgradeContext(settings=settings, reporter=ctx.reporter, old=old, new=args.new,
                        resume=f"ivle-maint cluster prepare --to {args.new}")
    run_phases(up, (BEFORE,))
    return 0


def _abandon(ctx: Context, pending: list[Any]) -> int:
    """Give back a slave prepared for an upgrade that will not happen now."""
    from ..procedure import AFTER, steps_for
    from ..upgrade import UpgradeContext, abort

    if not pending:
        ctx.reporter.info(f"no unfinished upgrade to {ctx.args.new}: nothing to abandon")
        return 0
    journal = pending[0]
    after = [s.name for s in steps_for(ctx.settings.role, [AFTER])]
    if any(name in journal.steps for name in after):
        raise MaintError(f"the upgrade {journal.old} -> {journal.new} is past its "
                         "before-phase (the new code is in place): finish it instead",
                         resume="dpkg --configure -a")
    up = UpgradeContext(settings=ctx.settings, reporter=ctx.reporter, old=journal.old,
                        new=journal.new, resume=f"ivle-maint cluster prepare --to {journal.new}")
    undone = abort(up)
    ctx.reporter.info(f"abandoned {journal.old} -> {journal.new}; restarted: "
                      f"{', '.join(undone) or 'nothing'}")
    return 0

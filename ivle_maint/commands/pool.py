"""ivle-maint pool status | drain | ready: this slave in the balancer's pool."""

from __future__ import annotations

from typing import Any

from . import Context, checked_version

ORDER = 45

EPILOG = """\
Each slave answers its balancer's health check at /.ivle-maint/pool through
its own Apache (conf-available/ivle-maint-pool.conf, written by 'drain' and
'ready'; enable it once: a2enconf ivle-maint-pool): 'ready VERSION' (200)
from [paths] state/pool/answer, or 404 once 'drain' removed that file, which
HAProxy's 'http-check disable-on-404' turns into draining: no new sessions,
requests in flight finish.  With [pool] balancer = haproxy, 'drain' and
'ready' then wait, at most [pool] drain_timeout seconds, until HAProxy's
stats socket ([pool] haproxy_socket) reports this server ([pool] server in
[pool] backend) drained (NOLB, DRAIN) or UP, and print how long that took;
a socket that fails or answers anything else is one line, exit status 1.
Before 'ready' changes anything, it asks IVLE itself for a real page
through this slave's own web server ([pool] ready_url), every half second
for at most [pool] ready_timeout seconds, and prints how long that took:
the page must answer 200, not ivle-maint's maintenance page, and carry
ivle.conf's [media] version.  A slave whose page never does stays out of
the pool (its answer unchanged): one line naming the URL and the last
thing seen, exit status 1.
Refused on a node whose [node] role is master (exit status 2); 'ready'
also while an upgrade of this node is unfinished (the schema hold).  See
doc/clusters.md for HAProxy's backend and other balancers."""


def register(sub: Any) -> None:
    import argparse

    parser = sub.add_parser(
        "pool",
        help="take this slave out of the balancer's pool (drain), put it back (ready), "
        "or show where it stands",
        description="Show or change this slave's answer to the balancer's health check, "
        "and HAProxy's view of it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="pool_action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="print this slave's answer and HAProxy's state of it",
        description="Print this slave's pool answer and, with [pool] balancer = haproxy, "
        "HAProxy's state of this server; changes nothing.")
    status.set_defaults(func=cmd_status)
    drain = actions.add_parser(
        "drain", help="answer 404: no new sessions; wait until HAProxy sees it",
        description="Remove this slave's pool answer (Apache answers 404), then wait "
        "until HAProxy reports the server drained.")
    drain.set_defaults(func=cmd_drain)
    ready = actions.add_parser(
        "ready", help="once IVLE serves a real page here, answer 'ready VERSION': back "
        "in the pool; wait until HAProxy sees it",
        description="Ask IVLE for a real page through this slave's own web server "
        "([pool] ready_url) until it answers 200 with ivle.conf's media version, then "
        "write this slave's pool answer, 'ready VERSION', and wait until HAProxy reports "
        "the server UP.")
    ready.add_argument("--version", dest="version", metavar="VERSION",
                       help="the IVLE version this slave serves (default: the version "
                       "ivle-maint last installed or upgraded to on this node)")
    ready.set_defaults(func=cmd_ready)


def _conf_note(ctx: Context) -> None:
    from ..pool import answer

    if not answer.conf_enabled(ctx.settings):
        ctx.reporter.warn(f"Apache does not serve {answer.URL} yet: a2enconf "
                          f"{answer.CONF_NAME}, then reload Apache")


def cmd_drain(ctx: Context) -> int:
    from ..lock import node_lock
    from ..pool import switch

    switch.check_role(ctx.settings, "drain")
    ctx.refuse_unsafe("run", "state")
    with node_lock(ctx.settings.path_of("run"), "pool drain"):
        switched = switch.drain(ctx.settings)
    ctx.reporter.info(f"pool: drain ({switched.path} removed: 404); {switched.balancer()}")
    _conf_note(ctx)
    return 0


def cmd_ready(ctx: Context) -> int:
    from ..errors import UsageError
    from ..installed import recorded_version
    from ..lock import node_lock
    from ..pool import switch

    switch.check_role(ctx.settings, "ready")
    checked_version(ctx.args.version, "pool ready --version")  # bad input: exit 2
    ctx.refuse_unsafe("run", "state")
    version = ctx.args.version or recorded_version(ctx.settings)
    if version is None:
        raise UsageError("pool ready: no IVLE version recorded on this node; give "
                         "--version VERSION")
    with node_lock(ctx.settings.path_of("run"), "pool ready"):
        switched = switch.ready(ctx.settings, version)
    ctx.reporter.info(f"pool: {switched.answer} ({switched.path}); {switched.ready}; "
                      f"{switched.balancer()}")
    _conf_note(ctx)
    return 0


def cmd_status(ctx: Context) -> int:
    from ..pool import answer, haproxy, switch

    settings = ctx.settings
    switch.check_role(settings, "status")
    ctx.refuse_unsafe("state")
    now = answer.read(settings)
    path = answer.answer_path(settings)
    print(f"answer: {now} ({path}{'' if now.ready else ' absent: 404'})")
    enabled = "enabled" if answer.conf_enabled(settings) else \
        f"not enabled (a2enconf {answer.CONF_NAME})"
    print(f"Apache: {answer.URL} {enabled}")
    at = haproxy.target(settings)
    if at is None:
        print("balancer: none asked ([pool] balancer = none)")
        return 0
    state = haproxy.server_state(at, min(switch.timeout(settings), 5.0))
    print(f"HAProxy: {state.backend}/{state.server} {state.state} "
          f"({'takes new sessions' if state.takes_new_sessions else 'no new sessions'})")
    return 0

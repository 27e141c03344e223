"""ivle-maint media show | set: ivle.conf's [media] version, by hand."""

from __future__ import annotations

from typing import Any

from . import Context, checked_version

ORDER = 40

RULE = """\
VERSION is a package version as dpkg's (1.1, 1:1.1-2, 1.1~rc1); anything
else (a space, a control character, '/', nothing) is refused, exit status 2.
The value written is derived from VERSION so that every node computes the
same one without talking to the others: VERSION with ':' replaced by '_',
then '.r2', '.r3', ... when that value was used before on this
node (STATE/media-versions.json, plus the value ivle.conf holds now).
Only the value text on its line changes; comments, order, quoting and
line ends stay as they are; the previous file goes to [paths] backup."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "media",
        help="show or set ivle.conf's [media] version (a step of IVLE's upgrade procedure)",
        description="Show or set ivle.conf's [media] version, which IVLE puts in the URLs "
        "of its static files; IVLE's upgrade procedure asks for a value not used before, "
        "the same on every slave, after each upgrade.",
    )
    actions = parser.add_subparsers(dest="media_action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="show the current value and the values used before",
        description="Show ivle.conf's [media] version and this node's record of the "
        "values used; changes nothing.",
    )
    show.add_argument("--for", dest="version", metavar="VERSION",
                      help="also show the value 'media set VERSION' would write")
    show.set_defaults(func=cmd_show)
    set_ = actions.add_parser(
        "set",
        help="set [media] version for the IVLE VERSION just installed",
        description="Set ivle.conf's [media] version for IVLE VERSION.  " + RULE,
        epilog="Run it on every slave with the same VERSION.  Running it again changes "
        "nothing; after reinstalling the same VERSION, add --reinstall.",
    )
    set_.add_argument("version", metavar="VERSION", help="the IVLE version just installed")
    set_.add_argument("--force", action="store_true",
                      help="add [media] version when ivle.conf leaves it unset "
                      "(default: [media] force in the settings)")
    set_.add_argument("--reinstall", action="store_true",
                      help="VERSION was installed again: use a value not used before")
    set_.set_defaults(func=cmd_set)


def cmd_show(ctx: Context) -> int:
    """Print the current value, the record, and optionally the next value."""
    from ..media.version import plan_media_version

    # The media value is made from VERSION: a typo ("1.1\nx") would be
    # written mangled ("1.1_x") and recorded as used.
    checked_version(ctx.args.version, "media show")
    settings = ctx.settings
    conf = settings.ivle_conf_dir / "ivle.conf"
    force = bool(settings["media"]["force"])
    plan = plan_media_version(conf, settings.path_of("state"), ctx.args.version, force=force)
    print(f"ivle.conf: {plan.path}")
    print(f"[media] version: {plan.current if plan.current is not None else '(not set)'}")
    if plan.record:
        print("values used on this node, oldest first:")
        for entry in plan.record:
            print(f"  {entry.value}  (IVLE {entry.version}, {entry.time or 'time unknown'})")
    else:
        print("values used on this node: none recorded")
    if ctx.args.version is not None:
        if plan.target is None:
            print(f"media set {ctx.args.version}: would leave it unset (add --force to set it)")
        elif plan.target == plan.current:
            print(f"media set {ctx.args.version}: already {plan.target}, nothing to do")
        else:
            print(f"media set {ctx.args.version}: would write {plan.target}")
    return 0


def cmd_set(ctx: Context) -> int:
    """Set [media] version for VERSION under the node lock."""
    from ..lock import node_lock
    from ..media.version import UNSET, change_media_version

    args = ctx.args
    checked_version(args.version, "media set")
    ctx.refuse_unsafe("run", "state", "backup")
    with node_lock(ctx.settings.path_of("run"), f"media set {args.version}"):
        result = change_media_version(
            ctx.settings, args.version, reinstall=args.reinstall,
            force=True if args.force else None,
        )
    ctx.reporter.info(f"{result.path}: {result.summary}")
    if result.action == UNSET:
        ctx.reporter.info("IVLE's upgrade procedure only changes a media version you have set; "
                          "--force adds one")
    if result.backup is not None:
        ctx.reporter.info(f"previous file: {result.backup}")
    return 0

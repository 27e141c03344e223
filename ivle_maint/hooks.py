"""dpkg's calls of IVLE's maintainer scripts, mapped to upgrade phases.

IVLE's preinst, postinst, prerm and postrm hand their arguments to
`ivle-maint hook SCRIPT ARGS...` (see /usr/share/ivle-maint/).  Each
calling form of Debian Policy chapter 6 (dpkg_calls.py) has its handler
here: it runs a phase, undoes one, or is explicitly nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import warm
from .cluster.admin import register
from .cluster.presence import coordinated
from .config import Settings
from .context import (
    ACCEPT_CLASS_ENV,
    ACCEPT_DATA_LOSS_ENV,
    AFTER,
    BEFORE,
    ROLLING_CHOICES,
    ROLLING_ENV,
    UNPACK_TOGETHER_ENV,
    RunOptions,
    UpgradeContext,
)
from .dpkg import package_version
from .dpkg_calls import VERSION_SLOTS, Form, HookCall
from .errors import MaintError, UsageError
from .gates.environment import one_of, yes_or_no
from .installed import record_fresh_install
from .output import Reporter
from .services import maintenance_page
from .upgrade import abort, also_abandoned, run_phases, unfinished_matching
from .versions import check as check_version
from .versions import parse as parse_version

# The resume command printed when a hook fails part-way.
DPKG_RESUME = "dpkg --configure -a  (or: ivle-maint rerun)"


Handler = Callable[[HookCall, "HookEnv"], str]


def dpkg_options(environ: Mapping[str, str]) -> RunOptions:
    """The run's options under dpkg, which passes none on a command line: what
    the person chose comes through its environment (IVLE_MAINT_DURING_UPGRADE,
    IVLE_MAINT_ACCEPT_CLASS: the keys --accept-class would name,
    IVLE_MAINT_ACCEPT_DATA_LOSS=1: what rollback --accept-data-loss says)."""
    accept_class = tuple(environ.get(ACCEPT_CLASS_ENV, "").replace(",", " ").split())
    return RunOptions(during_upgrade=environ.get(maintenance_page.ENV_MODE, ""),
                      accept_class=accept_class,
                      accept_data_loss=bool(yes_or_no(environ, ACCEPT_DATA_LOSS_ENV)),
                      unpack_together=yes_or_no(environ, UNPACK_TOGETHER_ENV),
                      rolling=one_of(environ, ROLLING_ENV, ROLLING_CHOICES),
                      rolling_from=ROLLING_ENV)


@dataclass
class HookEnv:
    """What a handler needs besides dpkg's arguments."""

    settings: Settings
    reporter: Reporter
    options: RunOptions
    # The new version's migrations (dh_ivle_maint's manifest, written out),
    # for the preinst's preflight.
    new_migrations: Path | None = None

    def context(self, *, old: str, new: str, code_is_new: bool = False, package: str = "",
                new_migrations: Path | None = None) -> UpgradeContext:
        """An upgrade's context as dpkg runs it: a failure resumes through dpkg."""
        return UpgradeContext(self.settings, self.reporter, old=old, new=new,
                              options=self.options, code_is_new=code_is_new,
                              resume=DPKG_RESUME, package=package,
                              new_migrations=new_migrations)


def _before(call: HookCall, env: HookEnv) -> str:
    """NEW-preinst upgrade OLD NEW: the old code is still installed."""
    old, new = call.args[0], call.args[1]
    warm.start_worker()  # loads the postinst's modules while the site is up
    ctx = env.context(old=old, new=new, new_migrations=env.new_migrations,
                      package=call.package)
    # dpkg runs the preinst once per attempt: a finished journal of the same
    # versions (a reinstall) is history, not this run.
    run_phases(ctx, (BEFORE,), restart_finished=True, before_unpack=True)
    return f"before-phase of {old} -> {new} done"


def _after(call: HookCall, env: HookEnv) -> str:
    """postinst configure OLD: the new code is unpacked; finish the upgrade."""
    old = call.args[0] if call.args else ""
    new = call.package_version
    if not old:
        line = record_fresh_install(env.context(old="", new=new, code_is_new=True))
        if coordinated(env.settings):  # the other nodes know it before its first upgrade
            register(env.settings, env.reporter, new, strict=False, note=f"installed {new}")
        return line
    old = _begun_from(env, old, new)
    ctx = env.context(old=old, new=new, code_is_new=True, package=call.package)
    # BEFORE too: if the preinst did not run it, its steps are still owed.
    run_phases(ctx, (BEFORE, AFTER))
    return f"upgrade {old} -> {new} complete"


def _begun_from(env: HookEnv, old: str, new: str) -> str:
    """The version the upgrade to NEW that the preinst began really comes from.

    dpkg's OLD is the last version it *configured*: installing NEW over a
    half-configured package (a rollback after a failed postinst: 1.0 over
    a half-configured 1.1) passes the version before that one (1.0), while
    the preinst began 1.1 -> 1.0.  Its unfinished journal says which."""
    if any(j.old == old for j in unfinished_matching(env.settings, new=new)):
        return old
    begun = [j for j in unfinished_matching(env.settings, new=new) if j.is_in_progress]
    return begun[0].old if len(begun) == 1 else old


def _abort(env: HookEnv, *, old: str | None = None, new: str | None = None) -> str:
    """Undo the unfinished upgrade matching OLD or NEW, whichever dpkg gave.

    During abort-upgrade dpkg's own record of the version is in flux, so
    the journal, not dpkg-query, says which upgrade is being abandoned.
    """
    lines, tried = [], set()
    found = unfinished_matching(env.settings, old=old, new=new)
    # The latest first (it holds the ones it took over), then what it took
    # over (also_abandoned), asked again after each.
    while todo := [j for j in found if j.path not in tried]:
        journal = todo[-1]
        tried.add(journal.path)
        undone = abort(env.context(old=journal.old, new=journal.new))
        lines.append(f"abandoned {journal.old} -> {journal.new}; restarted: "
                     f"{', '.join(undone) or 'nothing'}")
        found = unfinished_matching(env.settings, old=old, new=new) + \
            also_abandoned(env.settings, journal)
    return "; ".join(lines) or "no unfinished upgrade to abandon"


def _abort_from_old_script(call: HookCall, env: HookEnv) -> str:
    """OLD-postinst abort-upgrade NEW (OLD-preinst's stands for nothing: dpkg_calls)."""
    return _abort(env, new=call.args[0]) + _finish_owed(call, env)


def _finish_owed(call: HookCall, env: HookEnv) -> str:
    """dpkg takes OLD back as installed when this call succeeds (a refused
    downgrade's unwind, say): an upgrade *to* OLD it left half-done (its
    postinst failed) is finished first, as `dpkg --configure -a` would, or
    this call fails; never a package dpkg calls installed on a site that
    is down with an upgrade in progress."""
    done = []
    for journal in unfinished_matching(env.settings):
        # Its new code was installed (a postinst ran), and it is not the
        # upgrade dpkg just unwound.
        if not journal.is_in_progress or not journal.code_new or journal.new == call.args[0]:
            continue
        ctx = env.context(old=journal.old, new=journal.new, code_is_new=True,
                          package=call.package)
        run_phases(ctx, (BEFORE, AFTER))
        done.append(f"; finished the upgrade {journal.old} -> {journal.new} left half-done")
    return "".join(done)


def _abort_from_new_script(call: HookCall, env: HookEnv) -> str:
    """NEW-postrm abort-upgrade OLD."""
    return _abort(env, old=call.args[0])


def _nothing(call: HookCall, env: HookEnv) -> str:
    return call.nothing_line()


HANDLERS: dict[Form, Handler] = {
    Form.BEFORE: _before,
    Form.AFTER: _after,
    Form.ABORT_FROM_OLD: _abort_from_old_script,
    Form.ABORT_FROM_NEW: _abort_from_new_script,
    Form.NOTHING: _nothing,
}


def checked_call(call: HookCall, version: str | None) -> HookCall:
    """CALL with its versions checked (they become journal names and commands
    to print: dpkg's versions only, empty only where dpkg leaves one empty)
    and, for the postinst, the package's version (VERSION, or dpkg's word
    when None), checked alike."""
    slots = VERSION_SLOTS.get((call.script, call.action), ())
    # strict=False: postrm abort-upgrade may come with OLD alone (dpkg < 1.18.5)
    for text, empty_ok in zip(call.args, slots, strict=False):
        _check_version(call, text, empty_ok=empty_ok)
    if version is None and call.form is Form.AFTER:
        version = package_version(call.package)
    if version is not None:
        _check_version(call, version, empty_ok=False)
    return replace(call, package_version=version or "")


# The calls that only give the site back: their versions select unfinished
# journals (whose own versions name the files) and name nothing, so any
# version dpkg gives is taken, however long.  Refused, dpkg's unwind of a
# refused preinst stopped half-way and left the package to reinstall.
_UNDOING = (Form.ABORT_FROM_OLD, Form.ABORT_FROM_NEW)


def _check_version(call: HookCall, text: str, *, empty_ok: bool) -> None:
    if empty_ok and text == "":  # a first install: nothing was configured before
        return
    try:
        if call.form in _UNDOING:
            check_version(text, names=False)
        else:
            parse_version(text)
    except MaintError as exc:
        raise UsageError(f"{call.script} {call.action}: {exc}") from None


def run_hook(call: HookCall, env: HookEnv) -> str:
    """Dispatch one maintainer-script call; returns a line for the log."""
    return HANDLERS[call.form](call, env)

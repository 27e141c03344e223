"""A maintenance answer instead of a refused port while a slave is upgraded.

With [web] during_upgrade = maintenance, stop-web does not stop Apache:
IVLE's sites ([web] sites) are disabled with a2dissite, ivle-maint's
configuration (conf-available/ivle-maint-maintenance.conf, generated here)
is enabled with a2enconf, and Apache restarts gracefully: its listening
sockets stay open, so no client is refused, and every child that ran
IVLE's code finishes its request and exits; enter() waits until the
last one is gone (IVLE's code runs only in Apache's children: mod_python
imports the handlers there, the parent never serves a request).  From then
on every request is answered 503 with Retry-After, Cache-Control: no-store
and X-IVLE-Maintenance, and a small HTML page, by Apache alone.  With
[web] restart = full Apache is stopped and started instead (nothing of
the old server survives; clients are refused while it restarts).

start-web reverses exactly that: the sites this node's record says were
disabled by ivle-maint are enabled again, the configuration disabled, and
Apache restarted gracefully onto the new code.  The record lives in
[paths] state (maintenance.json), written before anything changes, so a
killed run, `rerun`, `dpkg --configure -a` and an abandoned upgrade all
find what to restore.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .. import quickrun, system
from ..config import Settings
from ..errors import MaintError, UsageError
from ..gates import clock, names, pidfiles, processes, trusted
from ..gates.rewrite import replace_file, write_state_file
from ..gates.schema_hold import (
    MAINTENANCE_RECORD,
    apache_dir,
    enabled_sites,
    why_not_disablable,
)
from ..gates.schema_hold import ivle_sites as sites
from ..gates.web import MAINTENANCE_HEADER
from ..journal import Journal, oldest_first
from ..output import Reporter
from ..safepaths import read_nofollow
from .drain import close_all, wait_all
from .init_scripts import (
    POLICY_DENY,
    RUNNING,
    SKIPPED,
    ServiceControl,
    ServiceResult,
    control_from_settings,
)

STOP, MAINTENANCE = "stop", "maintenance"
MODES = (STOP, MAINTENANCE)
ENV_MODE = "IVLE_MAINT_DURING_UPGRADE"
CONF_NAME = "ivle-maint-maintenance"
RECORD = MAINTENANCE_RECORD
HEADER = MAINTENANCE_HEADER  # what every GET (gates/web.fetch) looks for
# Apache's expression parser keeps a string of at most 8 KiB: the page, in
# ASCII with character references, is one.
PAGE_LIMIT = 7 * 1024
# ivle-maint's own page: when IVLE should be back (the Retry-After figure), and
# a reload then, so nobody sits pressing reload.
DEFAULT_PAGE = """\
<!DOCTYPE html>
<html><head><title>IVLE is being upgraded</title>
<meta http-equiv="refresh" content="{refresh}"></head>
<body><h1>IVLE is being upgraded</h1>
<p>{back}. This page reloads itself then; your work is safe.</p></body></html>
"""
# The most Retry-After (and the page's reload) says: a figure from a journal
# whose clocks jumped, or of 300 digits, is no estimate, and a browser may
# read a reload past its integer range as "now", over and over.
RETRY_AFTER_MAX = 7 * 24 * 3600
A2 = ("a2ensite", "a2dissite", "a2enconf", "a2disconf", "apache2ctl")


def mode(settings: Settings, chosen: str | None = None) -> str:
    """--during-upgrade, else $IVLE_MAINT_DURING_UPGRADE (dpkg's hooks), else the setting."""
    value = chosen or os.environ.get(ENV_MODE) or settings["web"]["during_upgrade"]
    if value not in MODES:  # only the environment's can be (the parser and spec check theirs)
        raise UsageError(f"during-upgrade mode {value!r}: use one of {', '.join(MODES)} "
                         f"(${ENV_MODE})")
    return str(value)


def _command(name: str) -> str:
    found = system.which(name) or system.which(name, path=system.SBIN_PATH)
    if not found:
        raise MaintError(f"{name} not found: [web] during_upgrade = maintenance needs "
                         f"Debian's apache2 (a2ensite, a2enconf, apache2ctl)")
    return found


def _run(*argv: str) -> None:
    done = system.run([_command(argv[0]), *argv[1:]], timeout=60)
    if not done.ok:
        last = done.tail[-1] if done.tail else "no output"
        raise MaintError(f"{' '.join(argv)} failed with status {done.exit_code}: {last}")


# -- the answer ------------------------------------------------------------

def back_in(seconds: int) -> str:
    """When IVLE should be back, in words, rounded up (never "0 minutes").

    Under a minute, then whole minutes up to 90, then whole hours."""
    if seconds < 60:
        return "in under a minute"
    minutes = math.ceil(seconds / 60)
    if minutes == 1:
        return "in about a minute"
    if minutes <= 90:
        return f"in about {minutes} minutes"
    return f"in about {math.ceil(seconds / 3600)} hours"  # > 90 minutes: at least 2


def default_page(seconds: int) -> str:
    """ivle-maint's page for a Retry-After of SECONDS: says when, reloads then."""
    back = f"IVLE is being upgraded and should be back {back_in(seconds)}"
    # Only generated words today, but escaped anyway: nothing reaches the
    # page unescaped if a figure ever comes from config or a journal.
    return DEFAULT_PAGE.format(refresh=html.escape(str(int(seconds))), back=html.escape(back))


def own_page(settings: Settings) -> str | None:
    """The site's own page ([web] maintenance_page), checked, served as it is; None if unset."""
    name = settings["web"]["maintenance_page"]
    if not name:
        return None
    path = Path(name)
    try:
        data = trusted.read(path, trusted.MAINTENANCE_PAGE)
    except OSError as exc:
        raise MaintError(f"[web] maintenance_page {path}: cannot read: "
                         f"{exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MaintError(f"[web] maintenance_page {path}: not UTF-8") from None
    if "\0" in text:  # Apache's strings end at a NUL: the page would be cut there
        raise MaintError(f"[web] maintenance_page {path}: holds a NUL byte, not a text page")
    if not text:  # ErrorDocument 503 "": a configuration Apache refuses
        raise MaintError(f"[web] maintenance_page {path}: empty")
    if _taken_for_a_link(text):
        raise MaintError(f"[web] maintenance_page {path}: holds no space and starts like "
                         f"a path or URL, which Apache would redirect to instead")
    if len(text.encode("ascii", "xmlcharrefreplace")) > PAGE_LIMIT:
        raise MaintError(f"[web] maintenance_page {path}: larger than {PAGE_LIMIT} bytes "
                         f"(Apache keeps it on one configuration line)")
    return text


def page_text(settings: Settings, seconds: int) -> str:
    """The site's own page, else ivle-maint's for a Retry-After of SECONDS."""
    own = own_page(settings)
    return default_page(seconds) if own is None else own


# Apache reads ErrorDocument's text three times: ${NAME} is replaced from its
# environment in the whole configuration line, its argument parser takes \\
# and \" as \ and ", and the text is then an expression (ap_expr, Apache
# 2.4.13+) in which %{NAME} is a value of each request (its URL, a header: a
# student's text into the page), $1 a regex match, \ an escape (\n, \101)
# and a malformed one a configuration Apache refuses.  So each character any
# of them reads is escaped for the expression, then for the argument parser:
# Apache sends exactly the page's characters, newlines and all.
_EXPR_ESCAPED = frozenset("\\\"'%${}")


def _expression_char(char: str) -> str:
    if char in _EXPR_ESCAPED:
        return "\\" + char
    if ord(char) < 0x20 or char == "\x7f":  # never raw on a configuration line
        return f"\\{ord(char):03o}"  # octal: Apache 2.4 reads no \x escape
    return char


def _expression(page: str) -> str:
    text = page.encode("ascii", "xmlcharrefreplace").decode("ascii")
    out: list[str] = []
    octal = False
    for char in text:
        # Apache's lexer takes the longest escape: "\0370" would be one
        # (refused: "Bad escape sequence"), so a digit after an octal
        # escape is one too.
        piece = f"\\{ord(char):03o}" if octal and char.isdigit() else _expression_char(char)
        octal = piece.startswith("\\") and piece[1:].isdigit()
        out.append(piece)
    return "".join(out)


def _taken_for_a_link(page: str) -> bool:
    """True if ErrorDocument would take PAGE for a local path or a URL to
    redirect to (Apache's test: no space, then a leading / or scheme:)."""
    expression = _expression(page)
    return " " not in expression and (expression.startswith("/") or bool(
        re.match(r"[A-Za-z0-9+.-]+:", expression)))


def apache_string(page: str) -> str:
    """PAGE as ErrorDocument's quoted argument: ASCII (Apache labels it
    iso-8859-1; other characters as references), one configuration line,
    that Apache gives back character for character."""
    return _expression(page).replace("\\", "\\\\").replace('"', '\\"')


def conf_text(retry_after: int, page: str) -> str:
    """conf-available/ivle-maint-maintenance.conf: 503 for every request."""
    return f"""\
# Generated by ivle-maint while this node is upgraded ([web] during_upgrade =
# maintenance); disabled again by its start-web step, removed on purge.
<IfModule !headers_module>
    LoadModule headers_module /usr/lib/apache2/modules/mod_headers.so
</IfModule>
<IfModule !alias_module>
    LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so
</IfModule>
Redirect 503 /
ErrorDocument 503 "{apache_string(page)}"
Header always set Retry-After "{retry_after}"
Header always set Cache-Control "no-store"
Header always set {HEADER} "1"
"""


def retry_after(settings: Settings, down: tuple[str, str]) -> tuple[int, str]:
    """Seconds to tell clients, and where the number comes from.

    This node's last completed upgrade's web-down time (DOWN: the step that
    stops the web server begun to the one that starts it done, stop-web to
    start-web) from its journals, else [web] retry_after.
    """
    newest = None
    for path in (settings.path_of("state") / "journal").glob("*.json"):
        try:
            journal = Journal.load(path)
        except MaintError:
            continue
        seconds = journal.down_for(*down)  # gates.clock: None if unknown; none if kept up
        if not journal.is_complete or seconds is None:
            continue
        if newest is None or oldest_first([newest[1], journal])[-1] is journal:
            newest = (seconds, journal)  # gates.clock: by recorded order, not a stamp
    if newest is None:
        return int(settings["web"]["retry_after"]), "[web] retry_after"
    seconds, journal = newest
    return min(RETRY_AFTER_MAX, max(1, math.ceil(seconds))), \
        f"the upgrade {journal.old} -> {journal.new}"


# -- the record --------------------------------------------------------------

@dataclass
class Record:
    """What ivle-maint changed in Apache's layout, to undo exactly that."""

    disabled: list[str]
    since: float

    @staticmethod
    def path(settings: Settings) -> Path:
        return settings.path_of("state") / RECORD

    @classmethod
    def read(cls, settings: Settings) -> Record | None:
        path = cls.path(settings)
        try:
            data = json.loads(read_nofollow(path).decode("utf-8"))
            disabled, since = data["disabled"], data["since"]
            # Only what enter() writes: these names go to a2ensite (before,
            # "ivle" gave it i, v, l and e; "-h" an option).
            if not isinstance(disabled, list) or not all(
                    isinstance(name, str) and names.why_not_a_site_name(name) is None
                    for name in disabled):
                raise ValueError("'disabled' is no list of Apache site names")
            if isinstance(since, bool) or not isinstance(since, int | float):
                raise TypeError("'since' is no number")
            return cls(list(disabled), float(since))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, OverflowError) as exc:
            raise MaintError(f"{path}: unreadable: {exc}") from None

    def write(self, settings: Settings) -> None:
        text = json.dumps({"disabled": self.disabled, "since": self.since}) + "\n"
        write_state_file(self.path(settings), text.encode(), mode=0o644)


def in_maintenance(settings: Settings) -> bool:
    """True while this node answers the maintenance page (its record exists)."""
    return Record.path(settings).exists()


# -- Apache's processes -----------------------------------------------------

def _apache_binary() -> str | None:
    """The real path of the apache2 program (checked by gates/trusted), if any."""
    try:
        found = system.which("apache2", system.SBIN_PATH)
    except MaintError:
        return None
    return os.path.realpath(found) if found else None


def _children() -> set[tuple[int, str]]:
    """(pid, start time) of every apache2 process whose parent is apache2.

    Known by the program the kernel runs (/proc/PID/exe), never by a name:
    a student's process may call itself apache2 (prctl), or carry a byte
    that is not UTF-8 in its name (gates/processes: names are theirs)."""
    binary = _apache_binary()
    if binary is None:
        return set()
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe").removesuffix(" (deleted)")
            if exe != binary:
                continue
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            found[int(entry)] = (int(fields[1]), fields[19].decode("ascii"))
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    # The web server's main process is root's, on the machine's root: anyone
    # may run apache2 with a configuration of their own, whose children
    # are no old children of the web server's (waiting for them ended in a
    # full restart).
    servers = {pid for pid in {ppid for ppid, _ in found.values()} & found.keys()
               if pidfiles.is_daemons(pid, 0)}
    return {(pid, start) for pid, (ppid, start) in found.items() if ppid in servers}


def _changed(result: ServiceResult) -> str:
    """RESULT's line, if the running server was changed: a restart that
    policy-rc.d forbade leaves it serving what it served (IVLE's old code at
    stop-web, the page at start-web), which no step may take for done.  A
    forbidden start of a stopped server serves nothing: said, as stop mode
    says it."""
    if result.outcome == SKIPPED and result.state == RUNNING:
        raise MaintError(f"{result.message}: {result.service} still serves what it served "
                         f"before; allow it in policy-rc.d, or use [web] during_upgrade = stop")
    return result.message


def _graceful(control: ServiceControl, name: str, how: str = "graceful") -> str:
    """Restart NAME gracefully (ports kept open); wait until its old children exit.

    how = full ([web] restart): a stop and a start instead."""
    if how == "full":
        return _changed(control.restart(name))
    if control.status(name) != RUNNING:
        # a rerun after a killed step: nothing to drain
        return _changed(control.start(name))
    control.may_start(name)  # a reload loads IVLE's code as a start does
    # Pidfds of the old children, opened before the reload: their exits are
    # the event waited for.  Each pidfd is of the very child judged (its
    # start time, gates/processes.pinned): a pid a student's process took
    # once the child ended is never waited for.
    old = [fd for fd in (processes.pinned(pid, start) for pid, start in _children())
           if fd is not None]  # fmt: skip
    started = time.monotonic()
    try:
        done = quickrun.run(control._argv(name, "reload"), timeout=control.timeout)
        if control.backend == "invoke-rc.d" and done.exit_code == POLICY_DENY:
            reason = control._denial(name, "reload", "\n".join(done.tail))
            _changed(ServiceResult(name, "reload", SKIPPED, RUNNING, control.backend, reason))
        if not done.ok:
            last = done.tail[-1] if done.tail else "no output"
            raise MaintError(f"{' '.join(done.argv)} failed with status {done.exit_code}: "
                             f"{last}")
        drained = wait_all(old, started + control.timeout - time.monotonic())
    finally:
        close_all(old)
    if not drained:
        # A request that never ends must not keep old code running.
        restarted = _changed(control.restart(name))
        return f"{name}: old children still busy after {control.timeout:g}s: {restarted}"
    if control.status(name) != RUNNING:
        raise MaintError(f"{name} is not running after its graceful restart")
    return f"{name}: restarted gracefully, every old process gone " \
           f"({time.monotonic() - started:.1f}s)"


# -- entering and leaving (stop-web and start-web) --------------------------

def enter(settings: Settings, reporter: Reporter, down: tuple[str, str]) -> str:
    """Put up the maintenance page (stop-web in maintenance mode); returns a
    summary.  DOWN: as for retry_after."""
    record = Record.read(settings)
    if record is None:  # a rerun keeps the first run's record of what it disabled
        record = Record(enabled_sites(settings), clock.wall())
        record.write(settings)
    seconds, source = retry_after(settings, down)
    conf = apache_dir(settings) / "conf-available" / f"{CONF_NAME}.conf"
    replace_file(conf, conf_text(seconds, page_text(settings, seconds)).encode(), mode=0o644)
    for name in record.disabled:
        _run("a2dissite", "-q", name)
    still = enabled_sites(settings)  # the gate's word, not a2dissite's exit status
    if still:
        raise MaintError(why_not_disablable(settings) or
                         f"IVLE's site {', '.join(still)} still enabled after a2dissite")
    _run("a2enconf", "-q", CONF_NAME)
    control = control_from_settings(settings, reporter)
    restarted = _graceful(control, settings["services"]["web"], settings["web"]["restart"])
    disabled = ", ".join(record.disabled) or "none enabled"
    return (f"maintenance page up (Retry-After {seconds}s from {source}); IVLE's sites "
            f"disabled: {disabled}; {restarted}")


def leave(settings: Settings, reporter: Reporter) -> str | None:
    """start-web after enter(): IVLE's sites back as they were; None if not in maintenance."""
    record = Record.read(settings)
    if record is None:
        return None
    _run("a2disconf", "-q", CONF_NAME)
    for name in record.disabled:
        _run("a2ensite", "-q", name)
    control = control_from_settings(settings, reporter)
    restarted = _graceful(control, settings["services"]["web"], settings["web"]["restart"])
    Record.path(settings).unlink()
    enabled = ", ".join(record.disabled) or "none"
    return f"maintenance page down; IVLE's sites enabled again: {enabled}; {restarted}"


def preflight(settings: Settings, chosen: str | None) -> None:
    """Before anything stops: the tools, the sites, the page, apache2ctl configtest."""
    if mode(settings, chosen) != MAINTENANCE:
        return
    why = why_not_disablable(settings)
    if why:
        raise MaintError(why)
    for name in A2:
        _command(name)
    available = apache_dir(settings) / "sites-available"
    for name in sites(settings):
        if not (available / f"{name}.conf").exists():
            raise MaintError(f"[web] sites: no Apache site {name} ({available}/{name}.conf)")
    own_page(settings)
    done = system.run([_command("apache2ctl"), "configtest"], timeout=60)
    if not done.ok:
        last = [line for line in done.tail if line.strip()][-1:] or ["no output"]
        raise MaintError(f"apache2ctl configtest failed: {last[0]} (fix Apache's "
                         f"configuration before upgrading in maintenance mode)")


def plan_line(settings: Settings, chosen: str | None, down: tuple[str, str]) -> str:
    chosen_mode = mode(settings, chosen)
    if chosen_mode == STOP:
        return "during the upgrade: web server stopped (refused connections; [web] " \
               "during_upgrade = stop)"
    seconds, source = retry_after(settings, down)
    page = settings["web"]["maintenance_page"] or "ivle-maint's own page"
    return (f"during the upgrade: maintenance page (503, Retry-After {seconds}s from "
            f"{source}; page: {page}; sites disabled: {', '.join(sites(settings))})")


"""The schema hold: never new code on an old schema, never old code on a new one.

Rule: while an upgrade journal of this node is unfinished (in-progress or
aborting), IVLE's web code does not run, whoever starts the web server:
a boot, an administrator's `systemctl start`, `invoke-rc.d`, `ivle-maint
services start web`.  The one way through is the start-web step itself
(also run when the upgrade is abandoned): it releases the hold for its own
upgrade (release(), recorded in [paths] state/schema-hold.json) once the
schema and the code agree, and only then starts the server.  A finished or
abandoned journal holds nothing.  Apache that answers only the maintenance
page (stop-web in maintenance mode: its record in [paths] state, none of
[web] sites enabled) runs no IVLE code, so it may start.

Where it is honoured:
- systemd: stop-web installs a drop-in for the web server's unit
  (/etc/systemd/system/apache2.service.d/ivle-maint-hold.conf: persistent,
  so a reboot keeps it) whose ExecStartPre is `ivle-maint hold check`,
  which fails while the hold is on: apache2 does not start at boot, nor by
  hand, nor through invoke-rc.d (which hands over to systemctl).  The
  drop-in goes when the hold is released, and on ivle-maint's purge.
- ivle-maint's own starts (services/init_scripts.py, every backend: init.d in a
  source install or a sandbox without systemd) ask check() first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import quickrun, system
from ..config import Settings
from ..errors import MaintError
from ..journal import Journal
from ..safepaths import read_nofollow
from .rewrite import replace_file, write_state_file
from .text import ivle_maint, shown

RELEASE_FILE = "schema-hold.json"  # in [paths] state: the upgrade whose start-web released it
MAINTENANCE_RECORD = "maintenance.json"  # in [paths] state (services/maintenance_page.py)
DROPIN_NAME = "ivle-maint-hold.conf"
SYSTEMD_UNIT_DIR = Path("/etc/systemd/system")


def upgrade_key(journal: Journal) -> str:
    """Names one run of one upgrade (a reinstall of the same versions gets another):
    its recorded identity, never a wall time (one from before identities: its
    creation stamp, as it was released then)."""
    return f"{journal.path.name}@{journal.ident or repr(journal.created)}"


@dataclass(frozen=True)
class Hold:
    """The unfinished upgrade that keeps IVLE's web code from running."""

    old: str
    new: str
    state: str
    where: str  # the step it stands at
    resume: str

    def describe(self) -> str:
        return f"the upgrade {self.old or '(none)'} -> {self.new} is unfinished ({self.state}" \
               f"{', ' + self.where if self.where else ''})"


def _where(journal: Journal) -> str:
    """The step not done, else the last one done, in the order they were
    begun (gates.clock: the recorded order, never the wall times)."""
    if not journal.steps:
        return "not begun"
    steps = sorted(journal.steps.items(), key=lambda item: (item[1].order, item[0]))
    for name, record in steps:
        if not journal.is_done(name):
            return f"{name} {record.status}"
    return f"after {steps[-1][0]}"


def decide(journals: list[Journal], released: str) -> Hold | None:
    """The pure rule: the first unfinished journal not released by its own start-web."""
    for journal in journals:
        if journal.is_unfinished and upgrade_key(journal) != released:
            return Hold(journal.old, journal.new, journal.state, _where(journal),
                        journal.resume)
    return None


def _release_path(settings: Settings) -> Path:
    return settings.path_of("state") / RELEASE_FILE


def released_key(settings: Settings) -> str:
    """The upgrade whose start-web released the hold ("" if none)."""
    try:
        data = json.loads(read_nofollow(_release_path(settings)).decode("utf-8"))
        return str(data["released"])
    except FileNotFoundError:
        return ""
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Fails closed: an unreadable release keeps the hold on.
        raise MaintError(f"{_release_path(settings)}: unreadable: {exc}") from None


def holding(settings: Settings) -> Hold | None:
    """The hold on this node, if any (a damaged journal: MaintError, the hold stays)."""
    journals = Journal.unfinished(settings.path_of("state"))
    if not journals:
        return None
    return decide(journals, released_key(settings))


# -- what Apache would serve ---------------------------------------------------

def apache_dir(settings: Settings) -> Path:
    return Path(settings["web"]["apache_dir"])


def ivle_sites(settings: Settings) -> list[str]:
    """[web] sites: IVLE's Apache sites (sites-available names)."""
    value = settings["web"]["sites"]
    names = [value] if isinstance(value, str) else list(value)
    return [n.removesuffix(".conf") for n in names if n]


def site_entries(settings: Settings) -> dict[str, list[Path]]:
    """Each of IVLE's sites ([web] sites) with the entries of sites-enabled
    that make Apache load it (none: not enabled).  Debian's apache2.conf
    includes every sites-enabled/*.conf, so an entry is the site when it is
    named NAME.conf (a2ensite's link, or a copy) or leads, under any name,
    to sites-available/NAME.conf (a link made by hand: 010-ivle.conf).
    Every reader of "is IVLE's site enabled" asks here: the hold, stop-web's
    record and its re-check, the maintenance preflight."""
    root = apache_dir(settings)
    enabled, available = root / "sites-enabled", root / "sites-available"
    found: dict[str, list[Path]] = {name: [] for name in ivle_sites(settings)}
    try:
        entries = sorted(os.listdir(enabled))
    except FileNotFoundError:
        return found
    except OSError as exc:  # fails closed: the hold cannot tell what Apache loads
        raise MaintError(f"{enabled}: cannot list it: {exc.strerror or exc}") from None
    sites = {os.path.realpath(available / f"{name}.conf"): name for name in found}
    for entry in entries:
        if not entry.endswith(".conf"):
            continue  # not included by Apache
        path = enabled / entry
        name = entry.removesuffix(".conf")
        if name not in found:
            name = sites.get(os.path.realpath(path), "")
        if name:
            found[name].append(path)
    return found


def enabled_sites(settings: Settings) -> list[str]:
    """IVLE's sites Apache would load (site_entries)."""
    return [name for name, entries in site_entries(settings).items() if entries]


def why_not_disablable(settings: Settings) -> str:
    """Why a2dissite could not disable one of IVLE's enabled sites ("" if it
    can): it removes only the link sites-enabled/NAME.conf."""
    for name, entries in site_entries(settings).items():
        for path in entries:
            if path.name != f"{name}.conf" or not path.is_symlink():
                what = "a link of another name" if path.name != f"{name}.conf" else \
                    "no symbolic link"
                return (f"IVLE's site {name} is enabled as {shown(path)} ({what}), which a2dissite "
                        f"cannot disable: remove it and run 'a2ensite {name}'")
    return ""


def only_maintenance(settings: Settings) -> bool:
    """True when the web server would answer only the maintenance page: stop-web
    put it up (its record) and none of IVLE's sites is enabled."""
    record = settings.path_of("state") / MAINTENANCE_RECORD
    return record.exists() and not enabled_sites(settings)


# -- the gate --------------------------------------------------------------------

def check(settings: Settings, service: str = "") -> None:
    """Raise (one line) if starting the web server now could run IVLE's code
    while an upgrade is unfinished; return if it may start."""
    hold = holding(settings)
    if hold is None or only_maintenance(settings):
        return
    name = service or settings["services"]["web"]
    raise MaintError(
        f"schema hold: {name} must not start: {hold.describe()}, and IVLE's code must not "
        f"serve until the schema and the code agree; only the upgrade's start-web step "
        f"starts it (or '{ivle_maint('rerun', '--abandon')}' on the old code)",
        resume=hold.resume,
    )


def web_service(settings: Settings) -> str:
    return str(settings["services"]["web"])


# -- the systemd drop-in -------------------------------------------------------

def dropin_path(settings: Settings, unit_dir: Path = SYSTEMD_UNIT_DIR) -> Path:
    return unit_dir / f"{web_service(settings)}.service.d" / DROPIN_NAME


def _quote(arg: str) -> str:
    """One argument of a systemd command line: specifiers (%), variables ($)
    and quotes escaped, as systemd.service(5) says.  Before, a settings path
    holding `${X}` or `$X` was expanded by systemd from the unit's
    environment: the hold check read another settings file, or none."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\;$"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_command(settings: Settings) -> list[str]:
    """The command systemd runs before starting the web server."""
    program = system.which("ivle-maint", path=system.SBIN_PATH)
    argv = [program] if program else [sys.executable, "-m", "ivle_maint"]
    if settings.path.exists():
        argv += ["--config", str(settings.path.absolute())]
    return [*argv, "hold", "check"]


def dropin_text(settings: Settings) -> str:
    package_root = Path(__file__).resolve().parents[2]
    command = check_command(settings)
    env = "" if command[0] != sys.executable else \
        f"Environment={_quote('PYTHONPATH=' + str(package_root))}\n"
    return (
        "# Written by ivle-maint's stop-web step while this node is upgraded; removed by\n"
        "# its start-web step once the schema and the code agree, and on purge.\n"
        "# The web server does not start (at boot, by hand, through invoke-rc.d) while\n"
        f"# the command below fails: see '{ivle_maint('status')}'.\n"
        "[Service]\n"
        f"{env}ExecStartPre={' '.join(_quote(a) for a in command)}\n"
    )


def systemd_manages(settings: Settings) -> bool:
    """True when systemd (PID 1) starts this node's web server: not when ivle-maint
    is told to drive init scripts of its own elsewhere ([services] backend = init.d
    with another initd_dir: a source install's or a sandbox's, not the system's)."""
    conf = settings["services"]
    own_scripts = conf["backend"] == "init.d" and \
        os.path.normpath(str(conf["initd_dir"])) != "/etc/init.d"
    return os.path.isdir("/run/systemd/system") and not own_scripts


def _daemon_reload() -> None:
    # Without system.run's 0.1 s poll: start-web reloads inside the outage.
    done = quickrun.run(["systemctl", "daemon-reload"], timeout=120)
    if not done.ok:
        last = done.tail[-1] if done.tail else "no output"
        raise MaintError(f"systemctl daemon-reload failed with status {done.exit_code}: {last}")


def install(settings: Settings, *, unit_dir: Path = SYSTEMD_UNIT_DIR,
            systemd: bool | None = None) -> str:
    """Put the hold in place where the system honours it; idempotent.
    Returns a line for the step's summary."""
    if not (systemd_manages(settings) if systemd is None else systemd):
        return "schema hold on (no systemd: ivle-maint's own starts check it)"
    path = dropin_path(settings, unit_dir)
    text = dropin_text(settings).encode()
    try:
        same = read_nofollow(path) == text
    except FileNotFoundError:
        same = False
    if not same:
        replace_file(path, text, mode=0o644)
        if systemd is None:
            _daemon_reload()
    return f"schema hold on ({path})"


def release(settings: Settings, journal: Journal | None, *,
            unit_dir: Path = SYSTEMD_UNIT_DIR,
            systemd: bool | None = None) -> tuple[str, Hold | None]:
    """start-web: the schema and the code agree; lift the hold for this
    upgrade.  What was done, and the hold that still stands: another
    unfinished upgrade's (one this upgrade carried on, unfinished again as
    this one is abandoned), whose drop-in stays: a reboot must not start
    the web server on its half-migrated schema."""
    if journal is not None:
        data = json.dumps({"released": upgrade_key(journal)}) + "\n"
        write_state_file(_release_path(settings), data.encode(), mode=0o644)
    other = holding(settings)
    if other is not None:
        return f"schema hold kept: {other.describe()}", other
    return remove_dropin(settings, unit_dir=unit_dir, systemd=systemd), None


def remove_dropin(settings: Settings, *, unit_dir: Path = SYSTEMD_UNIT_DIR,
                  systemd: bool | None = None) -> str:
    path = dropin_path(settings, unit_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        return "schema hold off"
    with contextlib.suppress(OSError):  # the administrator's own drop-ins stay
        path.parent.rmdir()
    if systemd is None and systemd_manages(settings) and shutil.which("systemctl"):
        _daemon_reload()
    return f"schema hold off ({path} removed)"


def status_line(settings: Settings) -> str:
    """One line for `status` and `plan`."""
    try:
        hold = holding(settings)
    except MaintError as exc:
        return f"schema hold: on ({exc})"
    if hold is None:
        return "schema hold: off (no unfinished upgrade)"
    path = dropin_path(settings)
    where = f"; systemd drop-in {path}" if path.exists() else ""
    if only_maintenance(settings):
        return f"schema hold: on, {hold.describe()}; the web server may answer only the " \
               f"maintenance page{where}"
    return f"schema hold: on, {hold.describe()}; the web server does not start{where}"

"""IVLE's upgrade procedure, "Rebuilding user jails": ``ivle-remakeuser -a`` on the master.

ivle-remakeuser exits 0 even when users fail: it prints "Failed to
recreate jail for LOGIN" and carries on.  So its output is read line by
line (and logged, never held), every such line is recorded, and once the
run is over the failed logins are reported together in one error.

The users come from the database's ``login`` table, because that is what
``ivle-remakeuser -a`` walks: the jail directories under [paths] [[jails]]
src also hold deleted users and miss users whose jail was never made.
Each login passes the names gate and is named on the tool's command line.
When the database cannot be read, remake_user_jails takes the logins of
the jail directories instead (a user with no jail directory yet is then
not made; the tool, which reads each user from the database too, fails
and says why).

Several processes: ``ivle-remakeuser LOGIN...`` rebuilds the users named,
so the users are dealt into one batch per core (os.cpu_count()), each run
by its own process at the same time, its logins given in command lines of
at most CHUNK_USERS.  Every batch's output is read as the single run's is;
the check afterwards is the same.  With fewer than MIN_BATCH users per
batch, or when the users could not be read from the database, one batch
does it all.  Never ``-a``: the tool would walk the login table itself,
past the names gate (a login ``__base__`` added since the table was read,
or one ivle-maint could not read at all, would have it empty the template).

Progress: the tool prints nothing for a user that works, so the heartbeat
watches src/LOGIN instead; a rebuild replaces that directory's entries,
which changes its inode or mtime.  Afterwards every user not reported as
failed must have its home (src/LOGIN/home/LOGIN); a user whose directory
shows no change at all is reported as a warning.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .. import children
from ..config import IvleConf, Settings
from ..db.connect import connect, params_from_settings
from ..errors import MaintError
from ..gates import names, waits
from ..gates.mounted import mounts_in, refuse_mounts_in
from ..mountinfo import Mount
from ..output import Reporter
from .template import ToolRun, command_argv, heartbeat, require_root, run_tool

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.5
SHOWN_USERS = 10
PROGRESS_LABEL = "rebuilding user jails"
MIN_BATCH = 16  # users per process below which another process is not worth it
CHUNK_USERS = 500  # logins in one command line (far below the kernel's limits)

# The tool's one sign of a failed user; a login holds no ':' or space (gates/names).
FAILED = re.compile(r"Failed to recreate jail for ([^\s:]+):?\s*(.*)")

Snapshot = dict[str, tuple[int, int] | None]


@dataclass(frozen=True)
class UserFailure:
    login: str
    reason: str

    def describe(self) -> str:
        return f"{self.login} ({self.reason})" if self.reason else self.login


@dataclass(frozen=True)
class UserJailsResult:
    """What remake_user_jails did, user by user."""

    run: ToolRun
    total: int
    total_from: str  # "database", "jail directories" or "given" (by the caller)
    rebuilt: int
    failed: tuple[UserFailure, ...] = ()
    unchanged: tuple[str, ...] = ()  # no failure reported, but no sign of a rebuild

    @property
    def summary(self) -> str:
        text = f"{self.rebuilt} of {self.total} user jails rebuilt"
        if self.failed:
            text += f", {len(self.failed)} failed"
        if self.unchanged:
            text += f", {len(self.unchanged)} show no change"
        return text

    processes: int = 1  # ivle-remakeuser processes run at the same time

    @property
    def metrics(self) -> dict[str, Any]:
        return {"users": self.total, "rebuilt": self.rebuilt, "failed": len(self.failed),
                "output_lines": self.run.lines, "tool_seconds": round(self.run.seconds, 3),
                "processes": self.processes}


class UserJailsError(MaintError):
    """Some users' jails were not rebuilt; .result has the details."""

    def __init__(self, message: str, result: UserJailsResult) -> None:
        super().__init__(message)
        self.result = result


def database_logins(settings: Settings, reporter: Reporter,
                    wait: float | None = None) -> list[str]:
    """Every login in IVLE's ``login`` table, in the tool's order (WAIT:
    seconds for a restarting server, default [database] wait_timeout)."""
    params = params_from_settings(settings)
    wait = float(settings["database"]["wait_timeout"]) if wait is None else wait
    conn = connect(params, wait_timeout=wait, reporter=reporter)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT login FROM login ORDER BY login")
            return [str(row[0]) for row in cur.fetchall()]
    finally:
        conn.close()


def jail_dir_logins(src: Path, not_users: set[Path]) -> list[str]:
    """Logins that have a directory under src (the templates excluded)."""
    if not src.is_dir():
        return []
    return sorted(p.name for p in src.iterdir()
                  if p.is_dir() and p not in not_users and not p.name.startswith("__"))


def _state(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def snapshot(src: Path, logins: list[str]) -> Snapshot:
    return {login: _state(src / login) for login in logins}


def changed_since(src: Path, before: Snapshot) -> set[str]:
    """Logins whose src/LOGIN was made, replaced or modified since BEFORE."""
    return {login for login, was in before.items()
            if (now := _state(src / login)) is not None and now != was}


def _expected_logins(settings: Settings, reporter: Reporter, src: Path,
                     templates: set[Path]) -> tuple[list[str], str]:
    try:
        return database_logins(settings, reporter), "database"
    except MaintError as exc:
        reporter.warn(f"cannot count users in the database ({exc}); counting jail "
                      f"directories in {src} instead")
        return jail_dir_logins(src, templates), "jail directories"


def check_logins(settings: Settings, reporter: Reporter,
                 ivle_conf: IvleConf | None = None) -> None:
    """The logins remake_user_jails would rebuild, each through the names
    gate as it passes them, for the preflight: a login that is no plain
    name refuses the upgrade while the site is still up."""
    src, templates = _jail_dirs(ivle_conf if ivle_conf is not None else settings.ivle_conf())
    _users(settings, reporter, src, templates, None)


def check_table_logins(settings: Settings, reporter: Reporter, tool: str) -> bool:
    """Before TOOL, one of IVLE's that walks the login table itself
    (ivle-mountallusers -u unmounts MOUNTS/LOGIN/home, MOUNTS/LOGIN/tmp
    and MOUNTS/LOGIN for each): every login through the names gate, a
    MaintError naming one that is no plain name ('..' would have it unmount
    the data directory).  False, with a warning, when the table cannot be
    read at once (no wait: the tool waits for no server either, and the
    site may be down): the tool is not to run."""
    try:
        logins = database_logins(settings, reporter, wait=0.0)
    except MaintError as exc:
        reporter.warn(f"cannot read the login table ({exc}); {tool} not run")
        return False
    for login in logins:
        names.plain_login(login, "the login table")
    return True


def _jail_dirs(conf: IvleConf) -> tuple[Path, set[Path]]:
    """[paths] [[jails]] src, and the templates in it that are no user's."""
    jails = conf.conf["paths"]["jails"]
    return Path(jails["src"]), {Path(jails["template"]), Path(jails["template_build"])}


def _users(settings: Settings, reporter: Reporter, src: Path, templates: set[Path],
           given: list[str] | None) -> tuple[list[str], str]:
    """The logins to rebuild and where they came from, each passed through
    the names gate before anything runs (a login is a path and an argument)."""
    logins, total_from = (given, "given") if given is not None else \
        _expected_logins(settings, reporter, src, templates)
    where = "the login table" if total_from == "database" else str(src)
    return [names.plain_login(login, where, src=src, not_users=templates)
            for login in logins], total_from


def _refuse_mounts(src: Path, logins: list[str], command: str) -> None:
    """The tool empties src/LOGIN but for home/LOGIN: a mount anywhere else
    in it, or on it (a home bound into tmp), would be emptied through
    (gates/mounted.py).
    The mount table is read once, each mount given to its login's check."""
    by_login: dict[str, list[Mount]] = {}
    depth = len(Path(os.path.realpath(src)).parts)
    for mount in mounts_in(src):
        by_login.setdefault(Path(mount.mountpoint).parts[depth], []).append(mount)
    for login in logins:
        if login in by_login:
            refuse_mounts_in(src / login, f"could not run {command}", itself=True,
                             spared=[src / login / "home" / login], table=by_login[login])


def _failure_message(run: ToolRun, failures: list[UserFailure], total: int) -> str:
    shown = ", ".join(f.describe() for f in failures[:SHOWN_USERS])
    more = len(failures) - SHOWN_USERS
    more_text = f" and {more} more (see the log)" if more > 0 else ""
    return (f"{run.command}: jails of {len(failures)} of {total} users were not rebuilt "
            f"(the tool exited {run.exit_code} all the same): {shown}{more_text}")


def process_count(users: int, wanted: int | None = None) -> int:
    """How many ivle-remakeuser processes share USERS users: WANTED, else
    one per core, but never fewer than MIN_BATCH users each."""
    cores = wanted if wanted is not None else (os.cpu_count() or 1)
    return max(1, min(cores, users // MIN_BATCH if wanted is None else users))


def batches(logins: list[str], count: int) -> list[list[str]]:
    """LOGINS dealt into COUNT batches of nearly equal size, each in order."""
    return [logins[i::count] for i in range(count) if logins[i::count]]


def _chunks(logins: list[str]) -> list[list[str]]:
    return [logins[i:i + CHUNK_USERS] for i in range(0, len(logins), CHUNK_USERS)]


def _run_batch(base: list[str], logins: list[str], conf_dir: Path, timeout: float,
               on_line: Callable[[str], None]) -> list[ToolRun]:
    """One batch's command lines, one after the other (a worker thread)."""
    runs = []
    for chunk in _chunks(logins):
        waits.checkpoint()  # stopped: start no other command
        runs.append(run_tool([*base, *chunk], ivle_conf_dir=conf_dir, timeout=timeout,
                             on_line=on_line))
        if runs[-1].exit_code != 0:
            break
    return runs


def _run_batches(base: list[str], parts: list[list[str]], conf_dir: Path, timeout: float,
                 on_line: Callable[[str], None]) -> ToolRun:
    """Every batch at the same time; one ToolRun for them all: the first
    failed command's status and tail, else the last one's."""
    started = time.monotonic()
    runs: list[ToolRun] = []
    with children.workers() as pool:
        for number, logins in enumerate(parts, 1):
            pool.start(f"remakeuser batch {number}",
                       partial(_run_batch, base, logins, conf_dir, timeout, on_line))
        while pool.running:
            pool.wait()
            _, done, error = pool.take()
            if error is not None:
                raise error
            runs.extend(done)
    waits.checkpoint()  # a worker of a stopped run: the kills are no failure
    failed = [r for r in runs if r.exit_code != 0]
    last = failed[0] if failed else runs[-1]
    return ToolRun((*base, "LOGIN..."), last.exit_code, sum(r.lines for r in runs),
                   time.monotonic() - started, last.tail)


def remake_user_jails(settings: Settings, reporter: Reporter, *, ivle_conf: IvleConf | None = None,
                      logins: list[str] | None = None,
                      interval: float = HEARTBEAT_SECONDS,
                      processes: int | None = None) -> UserJailsResult:
    """Run ``ivle-remakeuser`` ([commands] remakeuser) and check every user.

    LOGINS: the users the tool will walk, when the caller already knows
    them; by default they are read from the database.  PROCESSES: how many
    run at the same time (default: process_count).  Raises UserJailsError,
    after the run, when any user failed.
    """
    base = command_argv(settings, "remakeuser")
    argv = [*base, "LOGIN..."]
    require_root(shlex.join(argv))
    conf = ivle_conf if ivle_conf is not None else settings.ivle_conf()
    src, templates = _jail_dirs(conf)
    logins, total_from = _users(settings, reporter, src, templates, logins)
    _refuse_mounts(src, logins, shlex.join(argv))
    before = snapshot(src, logins)
    reported: dict[str, UserFailure] = {}
    guard = threading.Lock()  # lines arrive on sh's thread, beats on the heartbeat's

    def on_line(text: str) -> None:
        match = FAILED.search(text)
        if match:
            with guard:
                reported.setdefault(match[1], UserFailure(match[1], match[2].strip()))

    def beat(lines: int, seconds: float) -> None:
        with guard:
            failed = set(reported)
        done = changed_since(src, before) | failed
        reporter.progress(PROGRESS_LABEL, len(done), len(logins))

    timeout = float(settings["commands"]["timeout"])
    count = process_count(len(logins), processes) if total_from != "jail directories" else 1
    log.info("%s: %d users in %d processes", shlex.join(base), len(logins), count)
    if not logins:
        run = ToolRun((*base, "LOGIN..."), 0, 0, 0.0, ())
    else:  # the logins the gate passed, named: never -a (see the module's docstring)
        with heartbeat(lambda: beat(0, 0.0), interval):
            run = _run_batches(base, batches(logins, count), conf.path.parent, timeout,
                               on_line)
    if run.exit_code != 0:
        raise MaintError(run.failure())
    changed = changed_since(src, before)
    reporter.progress(PROGRESS_LABEL, len(logins), len(logins))
    failures = list(reported.values())
    unchanged = []
    for login in logins:
        if login in reported:
            continue
        if not (src / login / "home" / login).is_dir():
            failures.append(UserFailure(login, f"no {src / login / 'home' / login} afterwards"))
        elif login not in changed:
            unchanged.append(login)
    for login in unchanged:
        reporter.warn(f"jail of {login} shows no change after {run.command}")
    rebuilt = len(logins) - len({f.login for f in failures} & set(logins))
    result = UserJailsResult(run, len(logins), total_from, rebuilt, tuple(failures),
                             tuple(unchanged), count)
    log.info("%s: %s (users counted from the %s)", run.command, result.summary, total_from)
    if failures:
        raise UserJailsError(_failure_message(run, failures, len(logins)), result)
    return result


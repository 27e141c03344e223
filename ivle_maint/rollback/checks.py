"""After a rollback: is this node really back at its restore point?

Each check passes or fails with what differs; none is assumed from the
steps having run.  The database checks (migrations, schema) run where the
database is; the jail template where it was kept; the slaves' versions
from the cluster table and each slave's own answer (cluster/probe.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configobj import ConfigObj

from ..cluster import table
from ..cluster.probe import ask, checkable
from ..cluster.waits import Pending, TimedOut, poll_through
from ..config import Settings
from ..db.marker import applied, exists
from ..db.migration_class import ADDITIVE, listed
from ..db.session import session
from ..dpkg import package_version
from ..errors import MaintError
from ..journal import Journal
from ..output import Reporter
from ..safepaths import read_nofollow
from ..services.init_scripts import RUNNING, control_from_settings
from .fingerprint import schema_fingerprint
from .keep import IVLE_CONF, SETTINGS
from .point import RestorePoint


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str


def _check(name: str, look: Callable[[], str]) -> Result:
    """LOOK returns what it saw, or raises MaintError with what differs."""
    try:
        return Result(name, True, look())
    except MaintError as exc:
        return Result(name, False, str(exc))


def run_checks(settings: Settings, reporter: Reporter, point: RestorePoint,
               package: str | None, *, full: bool) -> list[Result]:
    checks: list[tuple[str, Callable[[], str]]] = []
    if package:
        checks.append(("package version", lambda: _package(package, point)))
    if settings.role.runs_database:
        checks.append(("migrations", lambda: _migrations(settings, reporter, point, full)))
        if full and point.schema is not None:
            checks.append(("schema fingerprint", lambda: _schema(settings, reporter, point)))
    if IVLE_CONF in point.files:
        checks.append(("ivle.conf", lambda: _ivle_conf(point)))
    if SETTINGS in point.files:
        checks.append(("ivle-maint settings", lambda: _same_file(point, SETTINGS)))
    if point.template is not None:
        checks.append(("jail template", lambda: _template(point)))
    if settings.role.runs_database:  # the master runs the user management server
        checks.append(("usrmgt", lambda: _usrmgt(settings, reporter, point)))
    if settings.role.runs_database and settings["cluster"]["coordinate"] != "never":
        checks.append(("slaves", lambda: _slaves(settings, reporter, point)))
    return [_check(name, look) for name, look in checks]


def table_lines(results: list[Result]) -> list[str]:
    width = max((len(r.name) for r in results), default=0)
    return [f"  {'pass' if r.ok else 'FAIL'}  {r.name:<{width}}  {r.detail}" for r in results]


def _package(package: str, point: RestorePoint) -> str:
    version = package_version(package)
    if version != point.old:
        raise MaintError(f"dpkg has {package} {version}, not {point.old}")
    return f"{package} {version}"


def _applied(settings: Settings, reporter: Reporter) -> set[str]:
    with session(settings, reporter, None) as s:
        return set(applied(s.conn)) if exists(s.conn) else set()


def _migrations(settings: Settings, reporter: Reporter, point: RestorePoint,
                full: bool) -> str:
    now, then = _applied(settings, reporter), set(point.marker or ())
    if point.marker is None:
        return f"{len(now)} applied (the upgrade never reached the migrate step)"
    missing, extra = sorted(then - now), sorted(now - then)
    if missing:
        raise MaintError(f"missing since the restore point: {listed(missing)}")
    if extra and full:
        raise MaintError(f"applied beyond the restore point: {listed(extra)}")
    not_additive = [k for k in extra if point.classes.get(k) != ADDITIVE]
    if not_additive:
        raise MaintError(f"kept, but not additive: {listed(not_additive)}")
    kept = f"; kept (additive): {listed(extra)}" if extra else ""
    return f"the restore point's {len(then)}{kept}"


def _schema(settings: Settings, reporter: Reporter, point: RestorePoint) -> str:
    with session(settings, reporter, None) as s:
        now = schema_fingerprint(s.conn)
    if now is None:
        raise MaintError("the catalogs could not be read without waiting for a lock")
    if now != point.schema:
        raise MaintError(f"fingerprint {now[:12]} differs from the point's "
                         f"{(point.schema or '')[:12]}")
    return f"equal ({now[:12]})"


def _ivle_conf(point: RestorePoint) -> str:
    """Equal to the kept copy but for [media] version (the rollback sets a
    new one: browsers must not keep the new release's static files)."""
    path = Path(point.files[IVLE_CONF]["original"])
    kept, now = (_without_media_version(data)
                 for data in (point.kept_file(IVLE_CONF), read_nofollow(path)))
    if kept != now:
        raise MaintError(f"{path} differs from the kept copy (besides [media] version)")
    return "as kept (but for [media] version)"


def _without_media_version(data: bytes) -> dict[str, object]:
    conf = ConfigObj(data.decode("utf-8", "replace").splitlines(), interpolation=False)
    found: dict[str, object] = conf.dict()
    media = found.get("media")
    if isinstance(media, dict):
        media.pop("version", None)
    return found


def _same_file(point: RestorePoint, name: str) -> str:
    path = Path(point.files[name]["original"])
    if read_nofollow(path) != point.kept_file(name):
        raise MaintError(f"{path} differs from the kept copy")
    return "as kept"


def _template(point: RestorePoint) -> str:
    assert point.template is not None
    live, inode = Path(point.template["path"]), point.template.get("inode")
    if not live.is_dir():
        raise MaintError(f"{live} is missing")
    if inode and str(os.lstat(live).st_ino) != inode:
        raise MaintError(f"{live} is not the template the restore point kept")
    return f"the kept one ({live})"


def _usrmgt(settings: Settings, reporter: Reporter, point: RestorePoint) -> str:
    """Running, and restarted by the rollback once the old code was in place
    (its journal complete: a rollback skips no step, release_needs.py)."""
    name = settings["services"]["usrmgt"]
    path = Journal.file_for(settings.path_of("state"), point.new, point.old)
    journal = Journal.load(path) if path.exists() else None
    if journal is None or not journal.is_complete:
        raise MaintError(f"{name} was not restarted by the rollback (its journal: {path})")
    if control_from_settings(settings, reporter).status(name) != RUNNING:
        raise MaintError(f"{name} is not running")
    return f"{name} running, restarted on {point.old}'s code"


class _Sessions:
    """The slaves check's link for cluster/waits.py's poll: each look on a
    session of its own, that makes nothing (Presence.connection would
    create the cluster's tables: a check changes nothing), and no row
    written (the rollback's own run wrote its last)."""

    def __init__(self, settings: Settings, reporter: Reporter) -> None:
        self.settings, self.reporter = settings, reporter

    def query(self, look: Callable[[Any], Pending | None]) -> Pending | None:
        with session(self.settings, self.reporter, None) as s:
            return look(s.conn)

    def waiting(self, step: str, note: str) -> None:
        return None

    def settle(self, timeout: float) -> None:
        time.sleep(timeout)  # a session per look: nothing listens between them


def _slaves(settings: Settings, reporter: Reporter, point: RestorePoint) -> str:
    """Every slave serving the old version, by its row and its own answer;
    waited for up to [cluster] slaves_timeout (cluster/waits.py's poll:
    a progress line when what it waits for changes): the slaves start
    their web servers only once the master's rollback is done, a moment
    after it."""
    count = 0

    def check(conn: Any) -> Pending | None:
        nonlocal count
        wrong, count = _slaves_wrong(conn, settings, point)
        if not wrong:
            return None
        return Pending(" ".join(name for name, _ in wrong), "; ".join(t for _, t in wrong))

    try:
        poll_through(_Sessions(settings, reporter), reporter, check,
                     interval=float(settings["cluster"]["poll"]), step="checks",
                     timeout=float(settings["cluster"]["slaves_timeout"]),
                     label=f"the slaves to serve {point.old}")
    except TimedOut as exc:
        raise MaintError(exc.pending.text) from None
    return f"{count} slave(s) serve {point.old}" if count else "no slaves recorded"


def _slaves_wrong(conn: Any, settings: Settings,
                  point: RestorePoint) -> tuple[list[tuple[str, str]], int]:
    """(name, what is wrong) for each other web node not serving the old
    version; how many.  Chosen as the cluster's waits choose (NodeRow.has_web):
    a row that failed the table's gate (a role spelled 'SLAVE') may serve
    anything, so it is wrong until fixed or forgotten, never left out."""
    me = settings.node_name
    rows = [r for r in table.nodes(conn) if r.name != me and r.has_web]
    wrong = [(r.name, r.invalid or f"{r.name} serves {r.serving or 'nothing'}") for r in rows
             if r.invalid is not None or r.serving != point.old]
    timeout = float(settings["cluster"]["probe_timeout"])
    here = table.hostname()
    for row in rows:  # a loopback URL is the slave's own: asked only from its machine
        if row.probe_url and row.serving == point.old and checkable(row, here):
            answer = ask(row.probe_url, timeout)
            if not answer.serving:
                wrong.append((row.name, f"{row.name}: {answer.text}"))
    return wrong, len(rows)

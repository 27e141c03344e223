"""This node's row in ivle_maint_nodes, kept in step with its journal.

The runner tells a Presence of every step (procedure.Observer); the row
it writes says what the other nodes need: which code is on the disk,
which version the service runs (NULL while down), the target and phase.
Reports are best effort: a database that is restarting must not fail a
step, so a failed report is one warning and the next report tries again.
The row that ends a run (failed, idle) waits up to [database] wait_timeout
for the server, and if even that fails it is kept in the state directory
(PENDING_ROW) and written by the next ivle-maint that reaches the
database, so the table never keeps saying "waiting" for a run that ended.
What the safety rules need (the waits, the media choice) connects through
connection(), which fails loudly instead; query() runs one look of a wait
and reconnects when the server restarted under it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import select
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .. import liveness
from ..consoles.jail_processes import list_consoles
from ..context import BEFORE, SLAVE, Phase, Role, RunEvent, Step, select_steps, serving
from ..db.apply import pg_reason
from ..db.connect import connect, params_from_settings
from ..errors import MaintError
from ..gates import trusted, waits
from ..gates.rewrite import replace_file, write_state_file
from ..gates.text import ivle_maint, shown
from ..jails.mounts import list_jail_mounts
from ..pgdriver import psycopg2
from ..safepaths import read_nofollow
from ..services.init_scripts import RUNNING, control_from_settings
from ..services.maintenance_page import in_maintenance
from ..versions import is_downgrade
from . import table
from .trust import RUNNING_PHASES, abandoned_note, second_master

if TYPE_CHECKING:
    from ..config import Settings
    from ..journal import Journal
    from ..output import Reporter

log = logging.getLogger(__name__)
T = TypeVar("T")
Serial = Callable[[Callable[[], Any]], Any]  # runs a use of the connection


def _now(call: Callable[[], T]) -> T:
    return call()


NODE_ID_FILE = "node-id"
PENDING_ROW = "cluster-row.pending.json"  # a final row the database missed
REPORT_WAIT = 5.0  # seconds a report waits for a starting server
STATUS_EVERY = 5.0  # seconds between two looks at the web server for the row
SETTLE_GAP = 0.25  # seconds at least from a settle to the next look, whoever NOTIFYs


def connection_lost(exc: BaseException, conn: Any) -> bool:
    """Did EXC come from the server going away (restart, crash), not a bad query?"""
    if isinstance(exc, psycopg2.InterfaceError):  # "connection already closed"
        return True
    return isinstance(exc, psycopg2.OperationalError) and bool(conn is None or conn.closed)


def coordinated(settings: Settings) -> bool:
    """Does this node take part in the cluster ([cluster] coordinate)?"""
    mode = settings["cluster"]["coordinate"]
    return mode == "always" or (mode == "auto" and settings.role is not Role.BOTH)


def node_id(settings: Settings) -> str:
    """A random id kept in the state directory: tells two nodes of one name apart.

    A file that holds no id as this writes one (32 hex digits; damaged,
    emptied) is replaced by a new id, as a lost one is: an empty id would
    be every such node's, bytes that are not UTF-8 failed every run."""
    path = settings.path_of("state") / NODE_ID_FILE
    try:
        value = read_nofollow(path).decode("utf-8", errors="replace").strip()
    except FileNotFoundError:
        value = ""
    if re.fullmatch("[0-9a-f]{32}", value):
        return value
    if path.exists() or path.is_symlink():
        log.warning("%s: no node id (%s): a new one is made", path, shown(value, 40) or "empty")
    value = secrets.token_hex(16)  # 32 hex digits, as uuid4().hex was
    write_state_file(path, f"{value}\n".encode(), mode=0o644)
    return value


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_id(settings: Settings) -> str | None:
    """[node] machine_id, else the system's machine id; None if there is none."""
    configured = str(settings["node"]["machine_id"] or "")
    if configured:
        return configured
    for path in MACHINE_ID_FILES:
        try:
            value = trusted.read(path, trusted.MACHINE_ID).decode("ascii").strip()
        except (OSError, ValueError):
            continue
        if value:
            return value
    return None


def name_holder(row: table.NodeRow, mine: dict[str, Any]) -> str | None:
    """Who else holds ROW's name, or None when the row is this machine's.

    The machine id decides; a row an older ivle-maint wrote has none, and
    then the node id kept in the state directory does."""
    if row.machine and mine.get("machine"):
        same = row.machine == mine["machine"]
    else:
        same = row.instance == mine["instance"]
    return None if same else f"host {row.host}, machine {row.machine or row.instance}"


def count_jail_use(settings: Settings) -> tuple[int | None, int | None]:
    """(jail mounts, console processes) on this node now; None where unreadable.

    What the master needs before it rewrites the shared jail tree: a jail
    mounted here pins the old template, a console runs the old code in it.
    """
    try:
        ivle = settings.ivle_conf()
        mounts = len(list_jail_mounts(ivle.jail_mounts))
        consoles = len(list_consoles(ivle.jail_mounts, share=ivle.share))
    except (MaintError, OSError) as exc:
        log.warning("could not count jail mounts and consoles: %s", exc)
        return None, None
    return mounts, consoles


def _downgrade(old: str, new: str) -> bool:
    """OLD -> NEW goes back (a rollback: no other downgrade runs)?"""
    try:
        return bool(old and new) and is_downgrade(old, new)
    except MaintError:
        return False


def current_media(settings: Settings) -> str | None:
    try:
        return settings.ivle_conf().media_version
    except MaintError:
        return None


class Presence:
    """The link of one run of ivle-maint to the cluster's tables."""

    def __init__(self, settings: Settings, reporter: Reporter) -> None:
        self.settings = settings
        self.reporter = reporter
        self.enabled = coordinated(settings)
        self.name = settings.node_name
        self.journal: Journal | None = None
        self.steps: tuple[Step, ...] = ()  # IVLE's procedure, which the journal follows
        self.code_is_new = False
        self._conn: Any = None
        self._lost_at: float | None = None  # when a connection this run had was lost
        self._warned = False
        self._jail_use: tuple[int | None, int | None] | None = None
        self._web_seen: tuple[float, bool] | None = None  # (when, running)

    # -- the database ------------------------------------------------------

    def connection(self, wait: float | None = None) -> Any:
        """An open connection with the tables in place; MaintError if none."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        db = self.settings["database"]
        params = params_from_settings(self.settings)
        timeout = db["wait_timeout"] if wait is None else wait
        conn = connect(params, wait_timeout=timeout, reporter=self.reporter)
        try:
            with errors_as_maint(params.dbname):
                table.ensure(conn, grantee=self._grantee())
                table.listen(conn)  # from now on: settle() wakes on any row's change
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        if self._lost_at is not None:  # whichever call saw the loss, one line says it is over
            self.reporter.info(f"reconnected to database {params.dbname} after "
                               f"{time.monotonic() - self._lost_at:.1f}s")
            self._lost_at = None
        self._flush_pending(conn)
        return conn

    def query(self, look: Callable[[Any], T]) -> T:
        """LOOK(conn), reconnecting within [database] wait_timeout when the
        server drops the connection (a restart by apt takes a fraction of a
        second, a crash recovery longer); a bad query still fails at once."""
        dbname = self.settings.ivle_conf().database["name"]
        budget = float(self.settings["database"]["wait_timeout"])
        while True:
            lost_at = self._lost_at
            remaining = budget if lost_at is None else budget - (time.monotonic() - lost_at)
            try:
                conn = self.connection(wait=max(0.0, remaining))
            except MaintError:
                if lost_at is None:
                    raise
                if remaining > 0:  # refused for a moment: a full rollback renames the database
                    time.sleep(0.2)
                    continue
                raise MaintError(f"database {dbname}: the connection was lost and not back "
                                 f"within {budget:g}s ([database] wait_timeout)") from None
            try:
                return look(conn)
            except Exception as exc:
                if not connection_lost(exc, conn):
                    self._raise_as_maint(exc, dbname)
                self._lost(exc)
                time.sleep(0.2)

    def _lost(self, exc: Exception) -> None:
        """Say once that the connection was lost, and drop it: the next
        connection() says when it is back."""
        if self._lost_at is None:
            dbname = self.settings.ivle_conf().database["name"]
            budget = float(self.settings["database"]["wait_timeout"])
            self.reporter.info(f"lost the connection to database {dbname} "
                               f"({_first_line(exc)}); reconnecting, up to {budget:g}s")
        self.drop()

    def settle(self, timeout: float, serial: Serial | None = None) -> None:
        """Until another node changes its row (table.upsert's NOTIFY, queued
        since the last look counts) or TIMEOUT passes: a wait sees the
        change at once (SETTLE_GAP after the last look at the soonest)
        instead of at its next poll.  A worker thread told
        to stop (gates/waits.stop_fd) returns at once, to its checkpoint.
        SERIAL runs each use of the connection (steps side by side share
        it); the wait between uses holds nothing."""
        started = time.monotonic()
        deadline, earliest = started + timeout, started + min(SETTLE_GAP, timeout)
        stop = waits.stop_fd()
        woken = False
        while True:
            if not woken:
                conn, woken = (serial or _now)(self._changed)
            now = time.monotonic()
            # A NOTIFY is anyone's with IVLE's database login: however many
            # come, the next look is SETTLE_GAP away at least (each look of
            # the master's asks every slave's web server).
            if now >= deadline or (woken and now >= earliest):
                return
            watched = [fd for fd in (None if woken else conn, stop) if fd is not None]
            select.select(watched, [], [], (earliest if woken else deadline) - now)
            if stop is not None and waits.stopping():
                return

    def _changed(self) -> tuple[Any, bool]:
        """(the connection to watch or None, whether another node wrote its row)."""
        conn = self._conn
        if conn is None or conn.closed:
            return None, False
        try:
            conn.poll()
        except psycopg2.Error as exc:
            self._lost(exc)  # the caller's next query reconnects
            return None, True
        theirs = [n for n in conn.notifies if n.pid != conn.get_backend_pid()]
        conn.notifies.clear()
        return conn, bool(theirs)

    @staticmethod
    def _raise_as_maint(exc: Exception, dbname: str) -> None:
        with errors_as_maint(dbname):
            raise exc

    def _flush_pending(self, conn: Any) -> None:
        """Write the final row an earlier run could not, unless newer news exists."""
        path = self.settings.path_of("state") / PENDING_ROW
        try:
            row = json.loads(read_nofollow(path).decode("utf-8"))
        except (OSError, ValueError):
            return
        why = _not_a_kept_row(row, self.name)
        if why:  # damaged, or another node's name: no row is better than a wrong one
            log.warning("%s: not written to the cluster table (%s); removed", path, why)
            path.unlink(missing_ok=True)
            return
        try:
            with errors_as_maint(self.settings.ivle_conf().database["name"]):
                table.upsert(conn, row)
        except MaintError as exc:
            log.info("pending cluster row not written yet: %s", exc)
            return
        path.unlink(missing_ok=True)
        log.info("wrote the cluster row an earlier run could not: %s", row.get("phase"))

    def _grantee(self) -> str | None:
        try:
            user = self.settings.ivle_conf().database.get("username")
        except MaintError:
            return None
        return str(user) if user else None

    def drop(self) -> None:
        """Close a connection that failed: the next connection() says when it is back."""
        if self._conn is not None and self._lost_at is None:
            self._lost_at = time.monotonic()
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the row -------------------------------------------------------------

    def attach(self, journal: Journal, steps: Sequence[Step], *, code_is_new: bool) -> None:
        self.journal, self.steps, self.code_is_new = journal, tuple(steps), code_is_new

    def _base(self) -> dict[str, Any]:
        has_web = self.settings.role.runs_web
        return {"name": self.name, "role": self.settings.role, "host": table.hostname(),
                "instance": node_id(self.settings), "media": current_media(self.settings),
                "machine": machine_id(self.settings),
                "probe_url": self.settings["cluster"]["probe_url"] if has_web else None}

    def row(self, phase: str, step: str | None = None, note: str | None = None) -> dict[str, Any]:
        """The row for this run's journal in PHASE."""
        j = self.journal
        assert j is not None
        new_code = self.code_is_new or j.is_complete
        mounts, consoles = self._jails_in_use(j)
        return {**self._base(), "version": j.new if new_code else j.old,
                "serving": self._serving(j),
                "target": None if phase == "idle" else j.new, "phase": phase, "step": step,
                "note": note, "mounts": mounts, "consoles": consoles,
                "runner": liveness.token() if phase in RUNNING_PHASES else None,
                "rollback": j.old if phase != "idle" and _downgrade(j.old, j.new) else None}

    def _jails_in_use(self, j: Journal) -> tuple[int | None, int | None]:
        """Counted once this run finds the jails unmounted and the web server not
        yet back; NULL otherwise (a serving slave may mount at any moment)."""
        unmounted = all(j.is_done(s.name) for s in select_steps(SLAVE, (BEFORE,), self.steps))
        if not self.settings.role.runs_web or not unmounted \
                or serving(self.settings.role, j, self.steps) == j.new:
            self._jail_use = None
            return None, None
        if self._jail_use is None:
            self._jail_use = count_jail_use(self.settings)
        return self._jail_use

    def _serving(self, j: Journal) -> str | None:
        """What the journal says it serves, unless a web server the journal says
        is down runs anyway (started by hand): then the old code, to be safe."""
        served = serving(self.settings.role, j, self.steps)
        if served is not None or not self.settings.role.runs_web:
            return served
        if in_maintenance(self.settings):  # Apache runs, answering only 503
            return None
        now = time.monotonic()
        if self._web_seen is None or now - self._web_seen[0] >= STATUS_EVERY:
            try:
                control = control_from_settings(self.settings, self.reporter)
                running = control.status(self.settings["services"]["web"]) == RUNNING
            except MaintError:
                return served
            self._web_seen = (now, running)
        return j.old if self._web_seen[1] else None

    def idle_row(self, version: str | None, serving: str | None, note: str) -> dict[str, Any]:
        """The row of a node that is not upgrading (cluster register, fresh install);
        its jails are not counted: idle, it may mount one at any moment."""
        return {**self._base(), "version": version, "serving": serving, "target": None,
                "phase": "idle", "step": None, "note": note, "mounts": None,
                "consoles": None, "runner": None, "rollback": None}

    def write(self, row: dict[str, Any], *, strict: bool = False, final: bool = False) -> None:
        """Write the row; strict raises, otherwise a failure is one warning.
        A FINAL row (the run ends) waits for the server, else is kept for later."""
        if not self.enabled and not strict:
            return
        reused = self._conn is not None and not self._conn.closed
        try:
            try:
                before = self._upsert(row, strict or final)
            except MaintError:
                if not reused:  # a new connection failed: the server's wait is done
                    raise
                # A connection the server dropped meanwhile (a rollback's
                # database swap ends every session): once more, on a new one.
                self.drop()
                before = self._upsert(row, strict or final)
        except MaintError as exc:
            self.drop()  # reconnect next time: the server may be restarting
            if strict:
                raise
            if final:
                self._keep_pending(row)
                self.reporter.warn(f"cluster table not updated: {exc}; the next ivle-maint "
                                   "that reaches the database records this node's state")
                return
            if not self._warned:
                self.reporter.warn(f"cluster table not updated: {exc}")
                self._warned = True
            return
        self._drop_pending()
        if before is not None and before != row["instance"]:
            self.reporter.warn(
                f"another ivle-maint also recorded itself as node {self.name!r}: give each "
                f"node its own [node] name (or forget the gone one: "
                f"{ivle_maint('cluster', 'forget', 'NAME')})")

    def _upsert(self, row: dict[str, Any], patient: bool) -> str | None:
        conn = self.connection(wait=None if patient else REPORT_WAIT)
        with errors_as_maint(self.settings.ivle_conf().database["name"]):
            return table.upsert(conn, row)

    def _keep_pending(self, row: dict[str, Any]) -> None:
        path = self.settings.path_of("state") / PENDING_ROW
        try:
            replace_file(path, (json.dumps(row) + "\n").encode(), mode=0o644)
        except (OSError, MaintError) as exc:
            log.warning("could not keep the unwritten cluster row: %s", exc)

    def _drop_pending(self) -> None:
        # This row is newer than any kept one.
        (self.settings.path_of("state") / PENDING_ROW).unlink(missing_ok=True)

    def observe(self, event: RunEvent, step: Step | None) -> None:
        """procedure.Observer: follow the journal into the table."""
        if not self.enabled or self.journal is None:
            return
        j = self.journal
        if step is not None:
            record = j.steps.get(step.name)
            if event is RunEvent.FAILED:
                self.write(self.row("failed", step.name, record.error if record else None),
                           final=True)
            else:
                # One row, one step: of steps running side by side (both
                # begun before either ends), the first in IVLE's order.
                shown = next((s for s in self.steps if j.is_running(s.name)), step)
                self.write(self.row(shown.phase, shown.name))
        elif event is RunEvent.ABORTED:
            self.write(self.row("idle", note=abandoned_note(j.new)), final=True)
        elif j.is_complete:
            self.write(self.row("idle", note=f"upgraded {j.old} -> {j.new}"), final=True)
        else:  # the before-phase alone ran: dpkg unpacks next
            self.write(self.row("unpack", note=f"ready for the code of {j.new}"), final=True)

    def refused(self) -> None:
        """This run was refused before its first step (the preflight, the
        restore point): the row says it gave its upgrade up, so a node that
        waits for it ([cluster] unpack_together's barrier, a master's wait
        for the slaves) stops at once (trust.gave_up) instead of waiting out
        its timeout.  Only over this node's own row."""
        if not self.enabled or self.journal is None:
            return
        try:
            with errors_as_maint(self.settings.ivle_conf().database["name"]):
                rows = table.nodes(self.connection())
        except MaintError:
            return  # the database is out of reach: no row to write either
        mine = next((r for r in rows if r.name == self.name), None)
        if mine is None or name_holder(mine, self._base()):
            # No row: no node waits for this one (and a node refused as a
            # second master must not be recorded).  Another's: the refusal
            # may be just that.
            return
        self.write(self.row("idle", note=abandoned_note(self.journal.new)), final=True)

    def waiting(self, step: str, note: str) -> None:
        if self.journal is not None:
            self.write(self.row("waiting", step, note))

    def preflight(self) -> None:
        """Record this node before anything stops; refuse a name two nodes use."""
        if not self.enabled or self.journal is None:
            return
        conn = self.connection()
        with errors_as_maint(self.settings.ivle_conf().database["name"]):
            rows = table.nodes(conn)
        twin = second_master(rows, self.name, self.settings.role)
        if twin:
            raise MaintError(twin)
        other = next((r for r in rows if r.name == self.name), None)
        if other is not None and name_holder(other, self._base()):
            raise MaintError(
                f"the cluster table already has a node named {self.name!r} written by another "
                f"ivle-maint (host {other.host}, node id {other.instance}): give this node its "
                f"own [node] name, or if that node is gone: "
                f"{ivle_maint('cluster', 'forget', self.name)}")
        self.write(self.row(Phase.BEFORE, "preflight"), strict=True)


def _not_a_kept_row(row: object, name: str) -> str:
    """Why ROW, read back from PENDING_ROW, is not this node's row as
    Presence.row writes it ("" when it is): the file survives runs."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}"
    if row.get("name") != name:
        return "not this node's name"
    columns = (*table.FIELDS, *table.LATER)
    for key, value in row.items():
        kind = int if table.LATER.get(key) == "integer" else str
        if key not in columns or not (value is None or (
                isinstance(value, kind) and not isinstance(value, bool))):
            return f"field {key[:40]!r}"
    values: dict[str, Any] = {k: row.get(k) for k in columns}
    return table.why_invalid(table.NodeRow(**values)) or ""


@contextmanager
def errors_as_maint(dbname: str) -> Iterator[None]:
    """psycopg2 errors from the cluster's queries as one-line MaintErrors."""
    try:
        yield
    except psycopg2.Error as exc:
        raise MaintError(f"database {dbname}: {pg_reason(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__

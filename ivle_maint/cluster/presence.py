"""This node's row in ivle_maint_nodes, kept in step with its journal.

The runner tells a Presence of every step (procedure.Observer); the row
it writes says what the other nodes need: which code is on the disk,
which version the service runs (NULL while down), the target and phase.
Reports are best effort: a database that is restarting must not fail a
step, so a failed report is one warning and the next report tries again.
What the safety rules need (the waits, the media choice) connects through
connection(), which fails loudly instead.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import MaintError
from . import table

if TYPE_CHECKING:
    from ..config import Settings
    from ..journal import Journal
    from ..output import Reporter
    from ..procedure import Step

log = logging.getLogger(__name__)

NODE_ID_FILE = "node-id"
REPORT_WAIT = 5.0  # seconds a report waits for a starting server


def coordinated(settings: Settings) -> bool:
    """Does this node take part in the cluster ([cluster] coordinate)?"""
    mode = settings["cluster"]["coordinate"]
    return mode == "always" or (mode == "auto" and settings.role != "both")


def node_id(settings: Settings) -> str:
    """A random id kept in the state directory: tells two nodes of one name apart."""
    path = settings.path_of("state") / NODE_ID_FILE
    try:
        from ..safepaths import read_nofollow

        return read_nofollow(path).decode("utf-8").strip()
    except FileNotFoundError:
        from ..atomic import write_state_file

        value = uuid.uuid4().hex
        write_state_file(path, f"{value}\n".encode(), mode=0o644)
        return value


def web_serving(settings: Settings, journal: Journal) -> str | None:
    """The version this node's service runs, from the journal of its upgrade."""
    if settings.role in ("slave", "both"):
        if journal.is_done("start-web"):
            return journal.new
        return None if journal.is_done("stop-web") else journal.old
    return journal.new if journal.is_done("restart-usrmgt") else journal.old


def count_jail_use(settings: Settings) -> tuple[int | None, int | None]:
    """(jail mounts, console processes) on this node now; None where unreadable.

    What the master needs before it rewrites the shared jail tree: a jail
    mounted here pins the old template, a console runs the old code in it.
    """
    from ..steps.consoles import list_consoles
    from ..steps.mounts import list_jail_mounts

    try:
        ivle = settings.ivle_conf()
        mounts = len(list_jail_mounts(ivle.jail_mounts))
        consoles = len(list_consoles(ivle.jail_mounts, share=ivle.share))
    except (MaintError, OSError) as exc:
        log.warning("could not count jail mounts and consoles: %s", exc)
        return None, None
    return mounts, consoles


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
        self.code_is_new = False
        self._conn: Any = None
        self._warned = False
        self._jail_use: tuple[int | None, int | None] | None = None

    # -- the database ------------------------------------------------------

    def connection(self, wait: float | None = None) -> Any:
        """An open connection with the tables in place; MaintError if none."""
        from ..db.connect import connect, params_from_settings

        if self._conn is not None and not self._conn.closed:
            return self._conn
        db = self.settings["database"]
        params = params_from_settings(self.settings)
        timeout = db["wait_timeout"] if wait is None else wait
        conn = connect(params, wait_timeout=timeout, reporter=self.reporter)
        try:
            with errors_as_maint(params.dbname):
                table.ensure(conn, grantee=self._grantee())
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _grantee(self) -> str | None:
        try:
            user = self.settings.ivle_conf().database.get("username")
        except MaintError:
            return None
        return str(user) if user else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the row -------------------------------------------------------------

    def attach(self, journal: Journal, *, code_is_new: bool) -> None:
        self.journal, self.code_is_new = journal, code_is_new

    def _base(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.settings.role, "host": table.hostname(),
                "instance": node_id(self.settings), "media": current_media(self.settings)}

    def row(self, phase: str, step: str | None = None, note: str | None = None) -> dict[str, Any]:
        """The row for this run's journal in PHASE."""
        j = self.journal
        assert j is not None
        new_code = self.code_is_new or j.state == "complete"
        mounts, consoles = self._jails_in_use(j)
        return {**self._base(), "version": j.new if new_code else j.old,
                "serving": web_serving(self.settings, j),
                "target": None if phase == "idle" else j.new, "phase": phase, "step": step,
                "note": note, "mounts": mounts, "consoles": consoles}

    def _jails_in_use(self, j: Journal) -> tuple[int | None, int | None]:
        """Counted once this run finds the jails unmounted and the web server not
        yet back; NULL otherwise (a serving slave may mount at any moment)."""
        if self.settings.role not in ("slave", "both") or not j.is_done("unmount-jails") \
                or j.is_done("start-web"):
            self._jail_use = None
            return None, None
        if self._jail_use is None:
            self._jail_use = count_jail_use(self.settings)
        return self._jail_use

    def idle_row(self, version: str | None, serving: str | None, note: str) -> dict[str, Any]:
        """The row of a node that is not upgrading (cluster register, fresh install);
        its jails are not counted: idle, it may mount one at any moment."""
        return {**self._base(), "version": version, "serving": serving, "target": None,
                "phase": "idle", "step": None, "note": note, "mounts": None,
                "consoles": None}

    def write(self, row: dict[str, Any], *, strict: bool = False) -> None:
        """Write the row; strict raises, otherwise a failure is one warning."""
        if not self.enabled and not strict:
            return
        try:
            conn = self.connection(wait=None if strict else REPORT_WAIT)
            with errors_as_maint(self.settings.ivle_conf().database["name"]):
                before = table.upsert(conn, row)
        except MaintError as exc:
            self.close()  # reconnect next time: the server may be restarting
            if strict:
                raise
            if not self._warned:
                self.reporter.warn(f"cluster table not updated: {exc}")
                self._warned = True
            return
        if before is not None and before != row["instance"]:
            self.reporter.warn(
                f"another ivle-maint also recorded itself as node {self.name!r}: give each "
                "node its own [node] name (or 'ivle-maint cluster forget' the gone one)")

    def observe(self, event: str, step: Step | None) -> None:
        """procedure.Observer: follow the journal into the table."""
        if not self.enabled or self.journal is None:
            return
        j = self.journal
        if step is not None:
            record = j.steps.get(step.name)
            if event == "failed":
                self.write(self.row("failed", step.name, record.error if record else None))
            else:
                self.write(self.row(step.phase, step.name))
        elif event == "aborted":
            self.write(self.row("idle", note=f"upgrade to {j.new} abandoned"))
        elif j.state == "complete":
            self.write(self.row("idle", note=f"upgraded {j.old} -> {j.new}"))
        else:  # the before-phase alone ran: dpkg unpacks next
            self.write(self.row("unpack", note=f"ready for the code of {j.new}"))

    def waiting(self, step: str, note: str) -> None:
        if self.journal is not None:
            self.write(self.row("waiting", step, note))

    def preflight(self) -> None:
        """Record this node before anything stops; refuse a name two nodes use."""
        if not self.enabled or self.journal is None:
            return
        conn = self.connection()
        mine = node_id(self.settings)
        with errors_as_maint(self.settings.ivle_conf().database["name"]):
            other = next((r for r in table.nodes(conn) if r.name == self.name), None)
        if other is not None and other.instance != mine:
            raise MaintError(
                f"the cluster table already has a node named {self.name!r} written by another "
                f"ivle-maint (host {other.host}, node id {other.instance}): give this node its "
                f"own [node] name, or if that node is gone: ivle-maint cluster forget {self.name}")
        self.write(self.row("before", "preflight"), strict=True)


@contextmanager
def errors_as_maint(dbname: str) -> Iterator[None]:
    """psycopg2 errors from the cluster's queries as one-line MaintErrors."""
    import psycopg2

    try:
        yield
    except psycopg2.Error as exc:
        from ..db.apply import pg_reason

        raise MaintError(f"database {dbname}: {pg_reason(exc)}") from None

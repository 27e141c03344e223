"""The cluster's shared record, two tables in IVLE's database.

    ivle_maint_nodes    one row per node, rewritten by that node only
        name        text PRIMARY KEY   [node] name (default: the hostname)
        role        text               master | slave | both
        host        text               the machine's hostname
        instance    text               random id kept in the node's state
                                       directory: two nodes with one name
                                       are told apart by it
        machine     text               /etc/machine-id ([node] machine_id):
                                       the same machine even when its state
                                       directory was lost (register)
        probe_url   text               where its web server answers, for the
                                       master's check ([cluster] probe_url)
        version     text               the IVLE code on the node's disk
        serving     text               the version its service runs (the web
                                       server; usrmgt on a master); NULL: down
        target      text               the version being installed; NULL: idle
        phase       text               idle | before | unpack | after |
                                       waiting | failed
        step        text               the step running, waiting or failed
        media       text               ivle.conf's [media] version
        note        text               what it waits for, why it failed
        last_seen   timestamptz        the node's last report
        mounts      integer            a slave's jail mounts, counted once its
                                       upgrade's before-phase unmounted them;
                                       NULL: not counted (idle or serving:
                                       users may mount at any moment)
        consoles    integer            its python-console processes, likewise
        runner      text               the ivle-maint process writing a row of a
                                       running phase (before, after, waiting):
                                       liveness.py's token; NULL once its run
                                       ended (idle, unpack, failed)
        rollback    text               the version a rollback goes back from
                                       (its target is older); NULL: no rollback

    The master rebuilds the shared jail tree only while every other web
    node is upgrading and records 0 and 0 (waits.wait_for_jails_free).

    ivle_maint_media    every media version chosen for the slaves
        value       text PRIMARY KEY   a value is chosen once, ever
        version     text               the IVLE version it was chosen for
        chosen_by   text               the node that chose it
        chosen_at   timestamptz

    ivle_maint_rolls    how each release goes: decided once, by the first
                        node whose upgrade begins (roll.py)
        target      text PRIMARY KEY   the version being installed
        old         text               the version it upgrades from
        rolling     boolean            true: one batch of slaves at a time,
                                       the site up; false: IVLE's procedure
        why         text               the reason, for the other nodes to tell
        decided_by  text               the node that decided
        decided_at  timestamptz

    ivle_maint_roll_slots  the slaves out of the balancer's pool in a roll:
                        at most [cluster] roll_batch rows per target (roll.py)
        target      text               the version being rolled out
        node        text               the slave holding the slot; PRIMARY KEY
                                       (target, node)
        taken_at    timestamptz

Plain SQL over a psycopg2 connection; no policy here (see cluster/).
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..context import Role
from ..db import marker
from ..errors import MaintError
from ..gates import names, text
from ..gates.text import first_line, shown
from ..media.version import is_value as is_media_value
from ..pgdriver import psycopg2, sql
from ..versions import check as check_version

NODES, MEDIA = "ivle_maint_nodes", "ivle_maint_media"
ROLLS, SLOTS = "ivle_maint_rolls", "ivle_maint_roll_slots"
MARKER = "ivle_maint_migrations"

# Serializes the CREATE TABLEs of nodes that start together: 'IVLECLUS'.
_CREATE_LOCK = int.from_bytes(b"IVLECLUS", "big")

DDL = f"""
CREATE TABLE IF NOT EXISTS {NODES} (
    name text PRIMARY KEY,
    role text NOT NULL,
    host text NOT NULL,
    instance text NOT NULL,
    version text,
    serving text,
    target text,
    phase text NOT NULL,
    step text,
    media text,
    note text,
    last_seen timestamptz NOT NULL DEFAULT now(),
    mounts integer,
    consoles integer,
    machine text,
    probe_url text,
    runner text,
    rollback text
);
COMMENT ON TABLE {NODES} IS
    'IVLE nodes as ivle-maint last saw them (ivle-maint cluster status); each node writes its row';
CREATE TABLE IF NOT EXISTS {MEDIA} (
    value text PRIMARY KEY,
    version text NOT NULL,
    chosen_by text NOT NULL,
    chosen_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE {MEDIA} IS
    'media versions ivle-maint chose for the slaves, each once; do not edit by hand';
"""

# Tables a newer ivle-maint added: created beside the older two by the
# first node allowed to (ensure()); until then a roll cannot be decided.
ROLL_DDL = {
    ROLLS: f"""
CREATE TABLE IF NOT EXISTS {ROLLS} (
    target text PRIMARY KEY,
    old text NOT NULL,
    rolling boolean NOT NULL,
    why text NOT NULL,
    decided_by text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE {ROLLS} IS
    'how ivle-maint upgrades each release, decided once by the first node; do not edit by hand';
""",
    SLOTS: f"""
CREATE TABLE IF NOT EXISTS {SLOTS} (
    target text,
    node text,
    taken_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (target, node)
);
COMMENT ON TABLE {SLOTS} IS
    'slaves out of the pool in a rolling upgrade, at most [cluster] roll_batch per release';
""",
}
# What IVLE's login (the slaves') may do to each table another role created.
RIGHTS = {NODES: "SELECT, INSERT, UPDATE, DELETE", MEDIA: "SELECT, INSERT",
          ROLLS: "SELECT, INSERT, DELETE", SLOTS: "SELECT, INSERT, DELETE"}

FIELDS = ("name", "role", "host", "instance", "version", "serving", "target", "phase", "step",
          "media", "note")
# Columns a newer ivle-maint added: a table created by an older one gets
# them from the first node allowed to ALTER it; until then they read NULL.
LATER = {"mounts": "integer", "consoles": "integer", "machine": "text",
         "probe_url": "text", "runner": "text", "rollback": "text"}


@dataclass(frozen=True)
class NodeRow:
    name: str
    role: str
    host: str
    instance: str
    version: str | None
    serving: str | None
    target: str | None
    phase: str
    step: str | None
    media: str | None
    note: str | None
    last_seen: datetime | None = None
    age: float | None = None  # seconds since last_seen, by the server's clock, >= 0
    mounts: int | None = None
    consoles: int | None = None
    machine: str | None = None
    probe_url: str | None = None
    runner: str | None = None
    rollback: str | None = None
    invalid: str | None = None  # why the row failed the gate (nodes()), with the fix

    @property
    def node_role(self) -> Role | None:
        """The row's role; a row that failed the gate whatever it says is
        taken as BOTH (it may be a master, it may serve)."""
        if self.invalid is not None:
            return Role.BOTH
        try:
            return Role(self.role)
        except ValueError:  # never from nodes(): the gate refused it
            return None

    @property
    def has_web(self) -> bool:
        return self.node_role is not None and self.node_role.runs_web


PHASES = ("idle", "before", "unpack", "after", "waiting", "failed")  # what ivle-maint writes
UNKNOWN = "?"  # what a refused row is taken to serve and run: no version, older than any
NAME_MAX = names.NODE_NAME_MAX


def why_invalid(row: NodeRow) -> str | None:
    """What in ROW no ivle-maint writes, or None: the role, dpkg's syntax of
    each version, a known phase, counts not negative, a plain printable name."""
    found = []
    if names.why_not_a_node_name(row.name):
        found.append("name is not a plain printable name")
    if row.role not in tuple(Role):
        found.append(f"role {shown(row.role, 20)!r} is none of {', '.join(Role)}")
    for field in ("version", "serving", "target", "rollback"):
        value = getattr(row, field)
        # serving UNKNOWN: runs, at a version its node cannot tell (admin.service_serving)
        if value is not None and not (field == "serving" and value == UNKNOWN):
            try:
                check_version(value)
            except MaintError:
                found.append(f"{field} {shown(value, 40)!r} is not a version")
    if row.phase not in PHASES:
        found.append(f"phase {shown(row.phase, 20)!r} is unknown")
    for field in ("mounts", "consoles"):
        value = getattr(row, field)
        if value is not None and value < 0:
            found.append(f"{field} {value} is negative")
    return "; ".join(found) or None


# The fields of a row that are only told (shown, quoted in messages), each
# at most this many characters: one may be megabytes, and `cluster status`
# pads every row of its table to the widest.  A host name is at most
# NAME_MAX; a note is a step's error.
TOLD = {"host": NAME_MAX + 3, "step": NAME_MAX + 3, "media": NAME_MAX + 3, "note": 1000}


# last_seen as psycopg2 can make a datetime of it (Python's years 1 to 9999,
# a day spare for the session's time zone): ivle-maint writes the server's
# now(); 'infinity' or year 10000, written with IVLE's database login, failed
# every reader of the table, `cluster forget --force` of that row too.
_SEEN_HELD = "last_seen BETWEEN '0001-01-02' AND '9999-12-30'"


def _gated(row: NodeRow, seen_held: bool = True) -> NodeRow:
    """ROW as every decision may take it: unchanged when valid; else a node
    that may serve old code, be a master, hold jails, and has not finished.
    The fields it only tells (TOLD): one printable line each, bounded.
    SEEN_HELD: its last_seen was a time Python holds (else read as NULL)."""
    told: dict[str, Any] = {field: shown(value, limit) for field, limit in TOLD.items()
                            if isinstance(value := getattr(row, field), str)}
    row = dataclasses.replace(row, **told)
    why = "; ".join(filter(None, [why_invalid(row), None if seen_held else
                                  "last_seen is no time ivle-maint writes"])) or None
    if why is None:
        return row
    name = shown(row.name, 63)
    fix = (f"on that node: {text.command('ivle-maint', 'cluster', 'refresh')} (rewrites its "
           f"row); if it is gone: {text.ivle_maint('cluster', 'forget', '--force', row.name)}")
    return dataclasses.replace(
        row, serving=UNKNOWN, version=UNKNOWN,
        target=row.target if row.target is None else UNKNOWN,
        mounts=None, consoles=None,
        invalid=f"row {name} of {NODES} is not one ivle-maint writes ({why}); taken as a node "
                f"that may serve old code, be a master and hold jails; fix: {fix}")


def _exists(cur: Any, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
    found: bool = cur.fetchone()[0]
    return found


def _columns(cur: Any) -> set[str]:
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped", [NODES])
    return {row[0] for row in cur.fetchall()}


def _add_later_columns(cur: Any) -> None:
    """ALTER in the LATER columns if this role may (it owns the table)."""
    for column in LATER.keys() - _columns(cur):
        cur.execute("SAVEPOINT add_column")
        try:
            cur.execute(f"ALTER TABLE {NODES} ADD COLUMN IF NOT EXISTS {column} {LATER[column]}")
        except psycopg2.errors.InsufficientPrivilege:
            cur.execute("ROLLBACK TO SAVEPOINT add_column")  # the owner adds it later


def _grant(cur: Any, tables: tuple[str, ...], me: str, grantee: str | None) -> None:
    if grantee and grantee != me:
        for name in tables:
            cur.execute(sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(RIGHTS[name]), sql.Identifier(name), sql.Identifier(grantee)))


def _add_roll_tables(cur: Any, me: str, grantee: str | None) -> None:
    """Create the roll tables this role may (older sites lack them)."""
    for name, ddl in ROLL_DDL.items():
        if _exists(cur, name):
            continue
        cur.execute("SAVEPOINT add_roll_table")
        try:
            cur.execute(ddl)
        except psycopg2.errors.InsufficientPrivilege:
            # Another node's role creates it; until then roll.why_no_roll says so.
            cur.execute("ROLLBACK TO SAVEPOINT add_roll_table")
            continue
        _grant(cur, (name,), me, grantee)


def ensure(conn: Any, grantee: str | None = None) -> None:
    """Create the cluster's tables once; let GRANTEE (ivle.conf's user,
    which the slaves connect as) write them when another role creates them."""
    with conn, conn.cursor() as cur:
        both = _exists(cur, NODES) and _exists(cur, MEDIA)
        rolls = _exists(cur, ROLLS) and _exists(cur, SLOTS)
        if both and rolls and not LATER.keys() - _columns(cur):
            return
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [_CREATE_LOCK])
        cur.execute("SELECT current_user")
        me = cur.fetchone()[0]
        if both:  # an older ivle-maint's tables (COMMENT ON needs their owner)
            _add_later_columns(cur)
        else:
            cur.execute(DDL)
            _grant(cur, (NODES, MEDIA), me, grantee)
        _add_roll_tables(cur, me, grantee)


def upsert(conn: Any, row: dict[str, Any]) -> str | None:
    """Write this node's row; returns the instance id the row had before."""
    with conn, conn.cursor() as cur:
        fields = [*FIELDS, *(c for c in LATER if c in _columns(cur))]
        values = [row.get(f) for f in fields]
        updates = ", ".join(f"{f} = EXCLUDED.{f}" for f in fields[1:])
        placeholders = ", ".join(["%s"] * len(fields))
        cur.execute(f"SELECT instance, ROW({', '.join(fields)}) IS DISTINCT FROM "
                    f"ROW({placeholders}) FROM {NODES} WHERE name = %s FOR UPDATE",
                    [*values, row["name"]])
        before = cur.fetchone()
        cur.execute(
            f"INSERT INTO {NODES} ({', '.join(fields)}, last_seen) "
            f"VALUES ({placeholders}, now()) "
            f"ON CONFLICT (name) DO UPDATE SET {updates}, last_seen = now()",
            values,
        )
        # Delivered at commit to every node that listens (listen()): a wait
        # for another node's row wakes on the change, not on its next poll.
        # A row written again unchanged (last_seen alone: every waiting node
        # writes its row at each look) wakes nobody, else waiting nodes
        # would wake each other without end instead of sleeping to the poll.
        if before is None or before[1]:
            cur.execute(f"NOTIFY {NODES}")
    return str(before[0]) if before else None


def listen(conn: Any) -> None:
    """Be told (conn.notifies) whenever a node changes its row (upsert)."""
    with conn, conn.cursor() as cur:
        cur.execute(f"LISTEN {NODES}")


def nodes(conn: Any) -> list[NodeRow]:
    """Every node's row, by name; [] before any node recorded itself."""
    with conn, conn.cursor() as cur:
        if not _exists(cur, NODES):
            return []
        have = _columns(cur)
        later = ", ".join(c if c in have else f"NULL AS {c}" for c in LATER)
        cur.execute(
            f"SELECT {', '.join(FIELDS)}, CASE WHEN {_SEEN_HELD} THEN last_seen END, "
            f"CASE WHEN {_SEEN_HELD} THEN greatest(0, extract(epoch FROM now() - last_seen))"
            f"::float8 END, {later}, coalesce({_SEEN_HELD}, false) FROM {NODES} ORDER BY name"
        )
        # The one gate for rows other nodes (or a person) wrote: each decision
        # reads them from here, checked and, if refused, taken conservatively.
        return [_gated(NodeRow(*row[:-1]), row[-1]) for row in cur.fetchall()]


def set_serving(conn: Any, name: str, serving: str | None) -> bool:
    """Record what NAME's service runs now; False when NAME has no row."""
    with conn, conn.cursor() as cur:
        if not _exists(cur, NODES):
            return False
        cur.execute(f"UPDATE {NODES} SET serving = %s, last_seen = now() WHERE name = %s",
                    [serving, name])
        return bool(cur.rowcount == 1)


def forget(conn: Any, name: str) -> bool:
    """Delete NAME's row, and any roll slot it holds: a node that is gone
    never releases one (roll.py), and a roll would stop at it for good."""
    with conn, conn.cursor() as cur:
        if not _exists(cur, NODES):
            return False
        cur.execute(f"DELETE FROM {NODES} WHERE name = %s", [name])
        forgotten = bool(cur.rowcount == 1)
        if _exists(cur, SLOTS):
            cur.execute(f"DELETE FROM {SLOTS} WHERE node = %s", [name])
        return forgotten


def applied_keys(conn: Any) -> set[str] | None:
    """Keys in the migration marker; None when there is no marker table.

    Through the marker's row gate (db.marker.applied), as every reader of
    it: a key spelled otherwise, or a column changed by hand, is one line
    naming the statement that fixes it.  Read raw, a slave took such a
    row's migration for missing and waited out [cluster] master_timeout."""
    with conn:
        with conn.cursor() as cur:
            if not _exists(cur, MARKER):
                return None
        return set(marker.applied(conn))


def has_ivle_tables(conn: Any) -> bool:
    """Does the database hold IVLE's own schema (its users' table)?"""
    with conn, conn.cursor() as cur:
        return _exists(cur, "login")


def media_values(conn: Any) -> list[tuple[str, str]]:
    """(value, version) of every media version chosen, oldest first.

    The one gate for the rows of ivle_maint_media, which anyone with IVLE's
    database login may write: a slave takes a value chosen for its version
    into its ivle.conf, and IVLE puts it into every page's URLs.  A row
    whose value is no media version as ivle-maint makes one (media.version.
    is_value: a quote, '/', a space, a line break, megabytes) or whose
    version is none is left out, as if never chosen."""
    with conn, conn.cursor() as cur:
        if not _exists(cur, MEDIA):
            return []
        cur.execute(f"SELECT value, version FROM {MEDIA} ORDER BY chosen_at, value")
        return [(value, version) for value, version in cur.fetchall()
                if is_media_value(value) and _is_version(version)]


def _is_version(value: str) -> bool:
    try:
        check_version(value)
    except MaintError:
        return False
    return True


def claim_media(conn: Any, value: str, version: str, node: str) -> bool:
    """Record VALUE as chosen for VERSION; False if some node already has it."""
    with conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {MEDIA} (value, version, chosen_by) VALUES (%s, %s, %s) "
            "ON CONFLICT (value) DO NOTHING",
            [value, version, node],
        )
        return bool(cur.rowcount == 1)


def why_no_claim(conn: Any) -> str | None:
    """Why this role could not claim a media version (claim_media's INSERT,
    tried here and rolled back), or None when it can."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            role = cur.fetchone()[0]
            cur.execute("SAVEPOINT ivle_maint_claim")
            try:
                cur.execute(
                    f"INSERT INTO {MEDIA} (value, version, chosen_by) VALUES (%s, %s, %s) "
                    "ON CONFLICT (value) DO NOTHING",
                    ["ivle-maint preflight", "", "ivle-maint preflight"])
            except psycopg2.Error as exc:
                first = first_line(exc)
                return (f"role {role} may not insert into table {MEDIA} ({first}), so the "
                        f"slaves could not agree on a media version: GRANT SELECT, INSERT ON "
                        f"{MEDIA} TO {role}")
    finally:
        conn.rollback()
    return None


def hostname() -> str:
    return socket.gethostname()

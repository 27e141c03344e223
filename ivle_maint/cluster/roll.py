"""The database half of a rolling upgrade: one decision, bounded slots.

An additive release may roll: the slaves upgrade one batch at a time, each
out of the balancer's pool while it does, the site up (issue 27).  Two
things must hold for the whole cluster, and the nodes share nothing but
IVLE's database, so both live there (tables in table.py):

- the decision (ivle_maint_rolls), one row per target version: the first
  node whose upgrade begins decides (INSERT ... ON CONFLICT DO NOTHING) and
  every node then reads the row that stands, its own decision or not.  Two
  nodes deciding differently at once (their settings or packages differ)
  still end on one way for the release; the caller compares;
- the slots (ivle_maint_roll_slots): a slave leaves the pool only holding
  a slot of its target, and at most [cluster] roll_batch rows exist per
  target.  take_slot counts and inserts under one transaction-level
  advisory lock (ROLL_SLOT_LOCK), so two slaves never both take the last
  slot; the same node taking again (a rerun) keeps its slot.  A slave
  releases its slot once it serves again in the pool.  A slave whose
  upgrade failed keeps its slot on purpose: the roll stops there, at most
  a batch out, instead of taking slave after slave down with the same
  failure; `dpkg --configure -a` on it, once it serves again, releases
  the slot, and `cluster forget` of it (table.forget) drops it.

Rows are anyone's with IVLE's database login, so every read goes through a
gate as nodes() does: versions by dpkg's syntax, node names by the name
gate, the reason one printable bounded line, a time Python holds.  A row
that fails is one line (MaintError) naming the table and the statement
that removes it, never a traceback and never taken as a decision or a
holder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import MaintError
from ..gates import names
from ..gates.text import first_line, ivle_maint, shown
from ..pgdriver import psycopg2
from ..versions import MAX_LENGTH as VERSION_MAX
from ..versions import check as check_version
from . import table
from .table import ROLLS, SLOTS

# Serializes every take_slot in the cluster ('IVLEROLL'): the count of a
# target's holders and the insert of one more are one step.  Held to the
# end of take_slot's transaction (pg_advisory_xact_lock), never across it.
ROLL_SLOT_LOCK = int.from_bytes(b"IVLEROLL", "big")
WHY_MAX = 1000  # characters of a decision's reason as the gate takes it
_WHY_KEPT = WHY_MAX - 40  # what decide_once keeps of a longer one (shown's tail fits)
NAME_MAX = names.NODE_NAME_MAX
# decided_at as psycopg2 can make a datetime of it (as table._SEEN_HELD).
_AT_HELD = "decided_at BETWEEN '0001-01-02' AND '9999-12-30'"


@dataclass(frozen=True)
class RollRecord:
    """The decision that stands for TARGET."""

    target: str
    old: str
    rolling: bool
    why: str
    decided_by: str
    decided_at: datetime


@dataclass(frozen=True)
class Slot:
    """take_slot's answer: did NODE get (or keep) a slot; who holds one now."""

    taken: bool
    holders: tuple[str, ...]


def _is_version(value: object) -> bool:
    return isinstance(value, str) and table._is_version(value)


def why_invalid(target: object, old: object, *, rolling: object, why: object,
                decided_by: object, held: bool) -> str | None:
    """What in a row of ivle_maint_rolls no ivle-maint writes, or None.
    The text fields may come cut to one character past their limit."""
    found = []
    for field, value in (("target", target), ("old", old)):
        if not _is_version(value):
            found.append(f"{field} {shown(value, 40)!r} is not a version")
    if not isinstance(rolling, bool):
        found.append(f"rolling {shown(rolling, 20)!r} is not true or false")
    if not (isinstance(why, str) and 0 < len(why) <= WHY_MAX and why.isprintable()):
        found.append(f"why is not one printable line of at most {WHY_MAX} characters")
    if not isinstance(decided_by, str) or names.why_not_a_node_name(decided_by):
        found.append("decided_by is not a plain printable node name")
    if not held:
        found.append("decided_at is no time ivle-maint writes")
    return "; ".join(found) or None


def _quoted(value: str) -> str:
    """VALUE as an SQL string literal (VALUE is printable: one line)."""
    return "'" + value.replace("'", "''") + "'"


def _require(cur: Any, name: str) -> None:
    if not table._exists(cur, name):
        raise MaintError(f"table {name} does not exist: the first node whose database role "
                         f"may create it does ({ivle_maint('cluster', 'register')} on the "
                         "master)")


def _read(cur: Any, target: str) -> RollRecord | None:
    """The row for TARGET through the gate; None when there is none."""
    # Text read cut one past its limit: a row of megabytes is never fetched.
    cur.execute(
        f"SELECT target, left(old, {VERSION_MAX + 1}), rolling, left(why, {WHY_MAX + 1}), "
        f"left(decided_by, {NAME_MAX + 1}), CASE WHEN {_AT_HELD} THEN decided_at END, "
        f"coalesce({_AT_HELD}, false) FROM {ROLLS} WHERE target = %s", [target])
    row = cur.fetchone()
    if row is None:
        return None
    target_, old, rolling, why, by, at, held = row
    bad = why_invalid(target_, old, rolling=rolling, why=why, decided_by=by, held=held)
    if bad is not None:
        raise MaintError(
            f"row {target} of {ROLLS} is not one ivle-maint writes ({bad}); no roll is decided "
            f"by it; fix: DELETE FROM {ROLLS} WHERE target = {_quoted(target)}, then run again")
    return RollRecord(target_, old, rolling, why, by, at)


def _check_target(target: str) -> None:
    check_version(target)  # a version as dpkg takes it: safe in the fix's SQL


def _read_committed(conn: Any, cur: Any) -> None:
    """Every statement of this transaction sees what committed before it,
    whatever the role's default_transaction_isolation (its own to set, by
    ALTER ROLE): the holders counted after the slot lock include the last
    taker's, and the decision read after a conflicting insert is that one's
    (under REPEATABLE READ the insert failed, or the read saw no row)."""
    if conn.autocommit:  # the advisory lock would end with its own statement
        raise ValueError("the roll's writes need a transaction: the connection is in autocommit")
    if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise ValueError("the roll's writes begin their own transaction: end the open one")
    cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


def decide_once(conn: Any, *, target: str, old: str, rolling: bool, why: str,
                by: str) -> RollRecord:
    """Record this node's decision for TARGET unless one stands; the one
    that stands (this node's or another's: the caller compares)."""
    _check_target(target)
    check_version(old)
    if names.why_not_a_node_name(by):
        raise MaintError(f"node name {shown(by, 63)!r} {names.why_not_a_node_name(by)}")
    # What the gate takes: escaped first (one character may become ten), then cut.
    why = shown(shown(why), _WHY_KEPT) or "(no reason given)"
    for _ in range(3):  # a forget() between the INSERT and the read: again
        with conn, conn.cursor() as cur:
            # READ COMMITTED: a concurrent insert of TARGET makes this wait
            # for it, and the next statement's snapshot sees its row.
            _read_committed(conn, cur)
            _require(cur, ROLLS)
            cur.execute(f"INSERT INTO {ROLLS} (target, old, rolling, why, decided_by) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (target) DO NOTHING",
                        [target, old, rolling, why, by])
            record = _read(cur, target)
        if record is not None:
            return record
    raise MaintError(f"the roll decision for {target} in {ROLLS} was removed as it was made, "
                     "three times; run again")


def decision(conn: Any, target: str) -> RollRecord | None:
    """The decision that stands for TARGET, or None when none was made."""
    _check_target(target)
    with conn, conn.cursor() as cur:
        if not table._exists(cur, ROLLS):
            return None
        return _read(cur, target)


def forget(conn: Any, target: str) -> bool:
    """Drop TARGET's decision (an abandoned roll; `cluster forget`): the
    next node to begin decides again.  Its slots stay: each is its node's
    to release.  False when there was none."""
    with conn, conn.cursor() as cur:
        if not table._exists(cur, ROLLS):
            return False
        cur.execute(f"DELETE FROM {ROLLS} WHERE target = %s", [target])
        return bool(cur.rowcount >= 1)


def _literal(value: str) -> str:
    """VALUE as an SQL string literal on one printable line: E'...' with
    each character that is not printable as its \\u escape."""
    def one(c: str) -> str:
        if c.isprintable():
            return {"'": "''", "\\": "\\\\"}.get(c, c)
        return f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
    return "E'" + "".join(map(one, value)) + "'"


def _holders(cur: Any, target: str) -> tuple[str, ...]:
    """The nodes holding a slot of TARGET, through the name gate."""
    cur.execute(f"SELECT left(node, {NAME_MAX + 1}) FROM {SLOTS} WHERE target = %s",
                [target])
    found = sorted(row[0] for row in cur.fetchall())  # by Python's order, not the collation's
    bad = [n for n in found if names.why_not_a_node_name(n)]
    if bad:
        # Read cut one past the longest name: the DELETE matches the rows
        # so beginning, every one of them too long to be a name.
        raise MaintError(
            f"a row of {SLOTS} for {target} names no node as ivle-maint writes one "
            f"({shown(bad[0], 40)!r}): no node would release its slot; fix: DELETE FROM "
            f"{SLOTS} WHERE target = {_quoted(target)} AND left(node, {NAME_MAX + 1}) = "
            f"{_literal(bad[0])}, then run again")
    return tuple(found)


def take_slot(conn: Any, *, target: str, node: str, batch: int) -> Slot:
    """A slot of TARGET's roll for NODE if fewer than BATCH are held (or
    NODE holds one already: a rerun keeps it); who holds one now."""
    _check_target(target)
    if names.why_not_a_node_name(node):
        raise MaintError(f"node name {shown(node, 63)!r} {names.why_not_a_node_name(node)}")
    if batch < 1:
        raise MaintError(f"[cluster] roll_batch {batch}: at least 1")
    with conn, conn.cursor() as cur:
        _read_committed(conn, cur)
        _require(cur, SLOTS)
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [ROLL_SLOT_LOCK])
        holders = _holders(cur, target)
        if node in holders:
            return Slot(True, holders)
        if len(holders) >= batch:
            return Slot(False, holders)
        cur.execute(f"INSERT INTO {SLOTS} (target, node) VALUES (%s, %s)", [target, node])
        return Slot(True, tuple(sorted((*holders, node))))


def release_slot(conn: Any, *, target: str, node: str) -> bool:
    """NODE is back in the pool: its slot of TARGET is free.  False when it
    held none (released already: a rerun)."""
    with conn, conn.cursor() as cur:
        if not table._exists(cur, SLOTS):
            return False
        cur.execute(f"DELETE FROM {SLOTS} WHERE target = %s AND node = %s", [target, node])
        return bool(cur.rowcount == 1)


def slot_holders(conn: Any, target: str) -> tuple[str, ...]:
    """The nodes out of the pool in TARGET's roll, by name."""
    _check_target(target)
    with conn, conn.cursor() as cur:
        if not table._exists(cur, SLOTS):
            return ()
        return _holders(cur, target)


_PREFLIGHT = "ivle-maint preflight"  # no version: no real row is ever so named
_TRIES = (
    ("insert into", ROLLS, f"INSERT INTO {ROLLS} (target, old, rolling, why, decided_by) "
                           "VALUES (%s, '', false, '', '') ON CONFLICT (target) DO NOTHING"),
    ("read", ROLLS, f"SELECT target FROM {ROLLS} WHERE target = %s"),
    ("delete from", ROLLS, f"DELETE FROM {ROLLS} WHERE target = %s"),
    ("insert into", SLOTS, f"INSERT INTO {SLOTS} (target, node) VALUES (%s, 'x') "
                           "ON CONFLICT DO NOTHING"),
    ("read", SLOTS, f"SELECT node FROM {SLOTS} WHERE target = %s"),
    ("delete from", SLOTS, f"DELETE FROM {SLOTS} WHERE target = %s"),
)


def why_no_roll(conn: Any) -> str | None:
    """Why this role could not decide a roll or take and release a slot
    (each statement tried here and rolled back), or None when it can."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            role = cur.fetchone()[0]
            for name in (ROLLS, SLOTS):
                if not table._exists(cur, name):
                    return (f"table {name} does not exist and role {role} may not create it, "
                            f"so no roll could be decided or slot taken: run "
                            f"{ivle_maint('cluster', 'register')} on the master (its role "
                            "creates the tables) "
                            f"or GRANT CREATE ON SCHEMA public TO {role}")
            cur.execute("SAVEPOINT ivle_maint_roll")
            for verb, name, statement in _TRIES:
                try:
                    cur.execute(statement, [_PREFLIGHT])
                except psycopg2.Error as exc:
                    first = first_line(exc)
                    return (f"role {role} may not {verb} table {name} ({first}), so the "
                            f"slaves could not roll the release one batch at a time: GRANT "
                            f"{table.RIGHTS[name]} ON {name} TO {role}")
    finally:
        conn.rollback()
    return None

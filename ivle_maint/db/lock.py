"""A PostgreSQL session advisory lock: one migration runner at a time.

The lock lives in the server, so it covers runners on every node and in
every shell; it belongs to the session, so there is no stale lock file to
clear.  A runner killed by SIGKILL does not release it at once, though:
its backend notices the dropped connection only when its statement ends
(a migration's statement may run on for seconds; about 14 s was seen), and
holds the lock until then; a waiting runner sees the holder in
pg_stat_activity meanwhile.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from .. import liveness
from ..errors import LockedError
from ..output import Reporter

# Any fixed bigint, the same in every ivle-maint: 'IVLEMIGR' in ASCII.
LOCK_ID = int.from_bytes(b"IVLEMIGR", "big")
POLL_SECONDS = 0.25


def _try(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
        got: bool = cur.fetchone()[0]
    conn.commit()  # session locks outlive transactions; end this one anyway
    return got


# connect.application_name(): "ivle-maint TOKEN on HOST" (an older one:
# "ivle-maint VERSION on HOST pid PID"); HOST may be cut at 63 bytes.
_OURS = re.compile(r"^ivle-maint \S+ on (\S+)")


def _holder_row(conn: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT a.pid, a.application_name, a.client_addr, a.backend_start
              FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.classid = (%s >> 32)::oid AND l.objid = (%s & 4294967295)::oid
               AND l.objsubid = 1
            """,
            [LOCK_ID, LOCK_ID],
        )
        row = cur.fetchone()
    conn.commit()
    return row


@dataclass(frozen=True)
class Holder:
    """The lock holder's server session, and whether its ivle-maint lives."""

    server_pid: int
    runner: liveness.Runner | None
    judgement: liveness.Judgement

    @property
    def dead(self) -> bool:
        return self.judgement.verdict is liveness.Verdict.DEAD


def judge_holder(conn: Any) -> Holder | None:
    """The holder when it is an ivle-maint (by its application_name); None otherwise.

    Whether it is alive is liveness.judge's answer: from its boot id, PID
    namespace, pid and start time, never from its hostname."""
    row = _holder_row(conn)
    if row is None or not row[1] or not _OURS.match(row[1]):
        return None
    runner = liveness.parse(row[1])
    host = _OURS.match(row[1])
    where = " ".join(x for x in ((host.group(1) if host else ""),
                                 f"({row[2]})" if row[2] else "") if x)
    return Holder(int(row[0]), runner, liveness.judge(runner, where))


def stale_holder(conn: Any) -> tuple[int, int] | None:
    """(server pid, client pid) when the holder is an ivle-maint known to be dead.

    Its server session runs on until the statement it was running ends:
    the lock is held for nobody.
    """
    found = judge_holder(conn)
    if found is None or not found.dead or found.runner is None:
        return None
    return found.server_pid, found.runner.pid


def _stale_advice(server_pid: int, client: int) -> str:
    return (f"it was taken by ivle-maint pid {client} on this machine, which is dead; its "
            f"session still runs its last statement: end it with "
            f"SELECT pg_terminate_backend({server_pid}); (or rerun with "
            f"--terminate-stale-lock)")


def _unknown_advice(found: Holder) -> str:
    return (f"whether its ivle-maint still runs cannot be told from here: "
            f"{found.judgement.text}; if it is gone, end its session with "
            f"SELECT pg_terminate_backend({found.server_pid});")


def _resume_terminating(resume: str | None) -> str | None:
    """RESUME with --terminate-stale-lock, where that command takes it."""
    if resume is None or resume.startswith(("dpkg ", "ivle-maint rerun")):
        return "ivle-maint rerun --terminate-stale-lock"
    if resume.startswith("ivle-maint upgrade"):
        return f"{resume} --terminate-stale-lock"
    return resume


def terminate(conn: Any, server_pid: int) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", [server_pid])
        done: bool = cur.fetchone()[0]
    conn.commit()
    return done


def holder(conn: Any) -> str:
    """Who holds the lock, as far as this role may see: for messages."""
    row = _holder_row(conn)
    if row is None:
        return "another runner"
    pid, app, addr, since = row
    who = app or "another runner"
    where = f" from {addr}" if addr else ""
    when = f" since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if since else ""
    return f"{who} (server pid {pid}{where}{when})"


def acquire(conn: Any, *, timeout: float, reporter: Reporter, resume: str | None = None,
            terminate_stale: bool = False) -> None:
    """Take the lock, waiting up to timeout seconds with one message.

    terminate_stale: end the server session of a dead ivle-maint on this
    host that holds it, instead of waiting for its statement to end.
    """
    if _try(conn):
        return
    who = holder(conn)
    stale = stale_holder(conn)
    found = judge_holder(conn)
    if found is not None and found.judgement.verdict is liveness.Verdict.UNKNOWABLE:
        reporter.info(f"the migration lock is held by {who}: {_unknown_advice(found)}")
    if stale is not None and terminate_stale:
        reporter.info(f"ending server session {stale[0]} of dead ivle-maint pid {stale[1]}, "
                      "which holds the migration lock")
        terminate(conn, stale[0])
    elif stale is not None:
        reporter.info(f"the migration lock is held by {who}: {_stale_advice(*stale)}")
    reporter.info(f"waiting up to {timeout:g}s for the migration lock held by {who}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        if _try(conn):
            reporter.info("got the migration lock")
            return
    stale = stale_holder(conn)
    if stale is not None:
        raise LockedError(
            f"the migration lock is still held by {holder(conn)} after {timeout:g}s: "
            f"{_stale_advice(*stale)}",
            resume=_resume_terminating(resume),
        )
    found = judge_holder(conn)
    unknown = (f": {_unknown_advice(found)}" if found is not None
               and found.judgement.verdict is liveness.Verdict.UNKNOWABLE else "")
    raise LockedError(
        f"the migration lock is still held by {holder(conn)} after {timeout:g}s "
        f"([database] lock_timeout){unknown}",
        resume=resume,
    )


def release(conn: Any) -> None:
    if conn.closed:
        return
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])
    conn.commit()

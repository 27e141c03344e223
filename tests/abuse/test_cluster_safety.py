"""Cluster safety: who is alive, who may be treated as down, who may be forgotten.

Whether an ivle-maint run is alive is decided once (ivle_maint/liveness.py)
from its boot id, PID namespace, pid and start time: the migration lock's
holder (db/lock.py) and a node's row in the cluster table (cluster status,
cluster forget) are judged by it.  Real processes in real PID namespaces,
one real PostgreSQL server; the pure decisions have their generated cases
in tests/unit/test_cluster_decisions.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ivle_maint import liveness
from ivle_maint.db import lock

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

REPO = Path(__file__).resolve().parents[2]

# Takes the migration lock as ivle-maint names itself, then sits in a long
# statement: killed there, its server session keeps the lock.
HOLDER = """
import json, sys
import psycopg2
from ivle_maint.db import connect, lock
conn = psycopg2.connect(**json.loads(sys.argv[1]), application_name=connect.application_name())
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("SELECT pg_advisory_lock(%s)", [lock.LOCK_ID])
    print("locked", flush=True)
    cur.execute("SELECT pg_sleep(120)")
"""


def start_holder(dsn: dict[str, Any], *prefix: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*prefix, sys.executable, "-c", HOLDER, json.dumps(dsn)], env=env,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def wait_holder_sleeping(conn: Any) -> int:
    """The server pid of the holder's session once its long statement runs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)' "
                        "AND state = 'active'")
            row = cur.fetchone()
        conn.rollback()
        if row:
            return int(row[0])
        time.sleep(0.05)
    raise AssertionError("the holder never began its statement")


def judged_when(conn: Any, verdict: liveness.Verdict, timeout: float = 30) -> lock.Holder:
    """The holder once judged VERDICT (a killed process takes a moment to go)."""
    deadline = time.monotonic() + timeout
    while True:
        found = lock.judge_holder(conn)
        assert found is not None
        if found.judgement.verdict is verdict or time.monotonic() > deadline:
            assert found.judgement.verdict is verdict, found.judgement.text
            return found
        time.sleep(0.05)


@pytest.fixture
def waiter(postgres: Any) -> Any:
    conn = postgres.connect("postgres")
    yield conn
    with conn.cursor() as cur:  # end a killed holder's session: its lock with it
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "query = 'SELECT pg_sleep(120)'")
    conn.commit()
    conn.close()


def test_a_live_lock_holder_in_another_pid_namespace_is_not_declared_dead(postgres, waiter):
    """Same hostname, same machine, pid 1 of its own PID namespace: alive."""
    holder = start_holder(postgres.dsn("postgres"), "unshare", "--pid", "--fork", "--kill-child",
                          "--mount-proc")
    try:
        server_pid = wait_holder_sleeping(waiter)
        assert lock.stale_holder(waiter) is None  # no pg_terminate_backend advice
        found = lock.judge_holder(waiter)
        assert found is not None and found.server_pid == server_pid
        assert found.runner is not None and found.runner.pid == 1  # its own namespace's pid
        assert found.judgement.verdict is liveness.Verdict.ALIVE, found.judgement.text

        # Killed inside its statement: its session still holds the lock, for nobody.
        holder.send_signal(signal.SIGKILL)  # unshare, then its child (--kill-child)
        holder.wait(timeout=30)
        found = judged_when(waiter, liveness.Verdict.DEAD)
        assert "exited" in found.judgement.text
        assert lock.stale_holder(waiter) == (server_pid, 1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_dead_lock_holder_in_this_pid_namespace_is_still_found_dead(postgres, waiter):
    holder = start_holder(postgres.dsn("postgres"))
    try:
        server_pid = wait_holder_sleeping(waiter)
        assert lock.judge_holder(waiter).judgement.verdict is liveness.Verdict.ALIVE
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert lock.stale_holder(waiter) == (server_pid, holder.pid)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_lock_holder_on_another_machine_is_unknowable_and_says_how_to_check(
        postgres, waiter):
    conn = postgres.connect("postgres", application_name="ivle-maint 0123456789ab.effffffc."
                            "4242.1000 on elsewhere")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", [lock.LOCK_ID])
        conn.commit()
        found = lock.judge_holder(waiter)
        assert found is not None and found.judgement.verdict is liveness.Verdict.UNKNOWABLE
        assert "another machine" in found.judgement.text
        assert "check on elsewhere whether pid 4242" in found.judgement.text
        assert "ps -p 4242" in found.judgement.text
        assert lock.stale_holder(waiter) is None
    finally:
        conn.close()

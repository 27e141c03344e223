"""A cluster wait wakes on a NOTIFY of the cluster table (Presence.settle),
so that it sees another node's row at once.  A NOTIFY is anyone's with
IVLE's database login, though: sent in a loop, it made every wait (the
master's before migrating, with a probe of every slave's web server at
each look) look as fast as the server answered.  However many come, two
looks are at least presence.SETTLE_GAP apart."""

from __future__ import annotations

import threading
from typing import Any

from ivle_maint.cluster import presence as presence_module
from ivle_maint.cluster.presence import Presence
from ivle_maint.cluster.table import NODES
from ivle_maint.cluster.waits import Pending, TimedOut, poll_through
from support.migration_site import Site

TIMEOUT, INTERVAL = 2.0, 1.0


def test_a_flood_of_notifications_never_makes_a_wait_look_faster_than_its_gap(
        site: Site) -> None:
    presence = Presence(site.settings(), site.reporter)
    looks: list[int] = []

    def check(conn: Any) -> Pending:
        looks.append(1)
        return Pending("k", "a slave serves the old code")

    presence.query(lambda conn: None)  # the tables and the LISTEN in place
    done = threading.Event()

    def flood() -> None:
        conn = site.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not done.is_set():
                    cur.execute(f"NOTIFY {NODES}")
        finally:
            conn.close()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        poll_through(presence, site.reporter, check, interval=INTERVAL, step="migrate",
                     timeout=TIMEOUT, label="the slaves")
    except TimedOut:
        pass
    finally:
        done.set()
        thread.join(timeout=10)
        presence.close()
    # A slow machine makes fewer looks, never more: the bound holds under load.
    most = int(TIMEOUT / presence_module.SETTLE_GAP) + 2
    assert len(looks) <= most, f"{len(looks)} looks in {TIMEOUT}s (at most {most})"

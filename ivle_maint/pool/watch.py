"""The bounded wait until HAProxy sees this server drained, or up again.

HAProxy notices the pool answer at its next health check (`inter`), and
only after `fall` or `rise` checks in a row; nothing tells a watcher, so
its state is asked again every POLL seconds until it is the one wanted,
for at most [pool] drain_timeout seconds in all (each exchange is bounded
by what is left of it).  A socket that fails or answers anything but
HAProxy's answer ends the wait at once, in one line (haproxy.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MaintError
from ..gates import clock
from .haproxy import ServerState, Target, server_state

POLL = 0.05  # seconds between two looks
ASK_MAX = 5.0  # seconds one exchange may take, at most
ASK_MIN = 0.05  # ... and at least, even at the very end of the wait


@dataclass(frozen=True)
class Seen:
    """The state waited for, and how long after the start it was seen."""

    state: ServerState
    seconds: float


def out_of_the_pool(state: ServerState) -> bool:
    """No new sessions: NOLB, DRAIN (and MAINT or DOWN, which take none either)."""
    return not state.takes_new_sessions


def in_the_pool(state: ServerState) -> bool:
    return state.takes_new_sessions


def wait_for(at: Target, timeout: float, wanted: Callable[[ServerState], bool],
             what: str) -> Seen:
    """Ask HAProxy until WANTED(its state of the server), within TIMEOUT
    seconds; MaintError saying what it still reports otherwise."""
    start = clock.monotonic()
    while True:
        left = timeout - (clock.monotonic() - start)
        state = server_state(at, max(ASK_MIN, min(ASK_MAX, left)))
        elapsed = clock.monotonic() - start
        if wanted(state):
            return Seen(state, elapsed)
        if elapsed >= timeout:
            raise MaintError(f"HAProxy still reports {at.backend}/{at.server} {state.state} "
                             f"after {timeout:g}s ([pool] drain_timeout), not {what}")
        time.sleep(min(POLL, timeout - elapsed))


def drained(at: Target, timeout: float) -> Seen:
    return wait_for(at, timeout, out_of_the_pool, "drained")


def up(at: Target, timeout: float) -> Seen:
    return wait_for(at, timeout, in_the_pool, "UP")

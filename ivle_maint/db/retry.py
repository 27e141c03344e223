"""How a migration waits for other sessions' locks: the [database] settings
as one policy, and the pauses between its tries.

PostgreSQL queues lock requests in order: an ALTER TABLE waiting for a
reader's lock makes every later query on that table wait behind it.  So a
migration's statements wait at most lock_timeout, then give way (rolled
back) and try again after a pause that doubles, with jitter (two runners,
or a runner and a job that retries too, do not collide again in step),
bounded by count (retries) and by time (budget: no try starts later than
that many seconds after the first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..config import Settings

FIRST_PAUSE = 0.5  # seconds before the second try, before jitter


@dataclass(frozen=True)
class LockPolicy:
    lock_timeout: float = 0.0  # seconds a try waits for a lock; 0: one wait, no retries
    retries: int = 0  # tries after the first
    max_pause: float = 30.0  # the longest pause between two tries
    budget: float = 0.0  # no try starts this many seconds after the first; 0: no limit
    old_age: float = 0.0  # transactions older than this are waited for first; 0: never
    old_wait: float = 0.0  # seconds to wait for them; 0: no limit
    tell_interval: float = 5.0  # seconds between the lines that tell a wait

    @property
    def retrying(self) -> bool:
        return self.lock_timeout > 0

    @property
    def attempts(self) -> int:
        return self.retries + 1 if self.retrying else 1

    def attempt_timeout(self) -> float:
        """Each try's lock_timeout: ddl_lock_timeout, never above the budget."""
        if self.budget and self.budget < self.lock_timeout:
            return self.budget
        return self.lock_timeout

    def pause(self, attempt: int, draw: random.Random) -> float:
        """Seconds to wait after try ATTEMPT (1-based) gave way."""
        ceiling = min(self.max_pause, FIRST_PAUSE * 2 ** (attempt - 1))
        return draw.uniform(ceiling / 2, ceiling)

    def gives_up(self, attempt: int, elapsed: float, pause: float) -> bool:
        """After try ATTEMPT gave way, ELAPSED seconds after the first began."""
        if attempt >= self.attempts:
            return True
        return bool(self.budget) and elapsed + pause > self.budget


def from_settings(settings: Settings) -> LockPolicy:
    db = settings["database"]
    return LockPolicy(
        lock_timeout=db["ddl_lock_timeout"],
        retries=db["ddl_retries"],
        max_pause=db["ddl_retry_max_wait"],
        budget=db["statement_lock_timeout"],
        old_age=db["old_transaction_age"],
        old_wait=db["statement_lock_timeout"],
        tell_interval=db["tell_interval"],
    )

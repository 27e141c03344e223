"""How a migration waits for other sessions' locks (db/retry.py)."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.db.retry import FIRST_PAUSE, LockPolicy, from_settings

POLICY = LockPolicy(lock_timeout=2, retries=10, max_pause=30)


def test_the_pauses_double_up_to_the_longest_and_keep_at_least_half() -> None:
    draw = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(30, FIRST_PAUSE * 2 ** (attempt - 1))
        pause = POLICY.pause(attempt, draw)
        assert ceiling / 2 <= pause <= ceiling


@given(seed=st.integers(), attempt=st.integers(min_value=1, max_value=200),
       longest=st.floats(min_value=0, max_value=600))
def test_no_pause_exceeds_the_setting(seed: int, attempt: int, longest: float) -> None:
    policy = LockPolicy(lock_timeout=1, retries=5, max_pause=longest)
    assert 0 <= policy.pause(attempt, random.Random(seed)) <= longest


def test_two_runners_do_not_pause_in_step() -> None:
    pauses = {POLICY.pause(4, random.Random(seed)) for seed in range(20)}
    assert len(pauses) > 1


@given(retries=st.integers(min_value=0, max_value=50))
def test_it_gives_up_after_the_last_try_and_not_before(retries: int) -> None:
    policy = LockPolicy(lock_timeout=2, retries=retries)
    tries = next(n for n in range(1, retries + 2) if policy.gives_up(n, 0.0, 0.0))
    assert tries == retries + 1 == policy.attempts


def test_statement_lock_timeout_bounds_the_tries_in_time_too() -> None:
    policy = LockPolicy(lock_timeout=2, retries=10, budget=5)
    assert not policy.gives_up(1, 2.0, 1.0)
    assert policy.gives_up(2, 4.5, 1.0)  # the next try would start after 5 s


def test_a_try_never_waits_longer_than_statement_lock_timeout() -> None:
    assert LockPolicy(lock_timeout=2, budget=1).attempt_timeout() == 1
    assert LockPolicy(lock_timeout=2, budget=0).attempt_timeout() == 2


def test_no_ddl_lock_timeout_is_one_wait_and_no_retry() -> None:
    policy = LockPolicy(lock_timeout=0, retries=10)
    assert not policy.retrying and policy.attempts == 1


def test_the_settings_defaults(tmp_path: Path) -> None:
    path = tmp_path / "ivle-maint.conf"
    path.write_text("[node]\nrole = master\n")
    policy = from_settings(load_settings(str(path)))
    assert policy == LockPolicy(lock_timeout=2, retries=10, max_pause=30, budget=300,
                                old_age=60, old_wait=300, tell_interval=5)


def test_statement_lock_timeout_zero_leaves_the_count_as_the_only_bound(tmp_path: Path) -> None:
    path = tmp_path / "ivle-maint.conf"
    path.write_text("[database]\nstatement_lock_timeout = 0\nddl_retries = 3\n")
    policy = from_settings(load_settings(str(path)))
    assert not policy.gives_up(3, 10_000.0, 30.0) and policy.gives_up(4, 0.0, 0.0)

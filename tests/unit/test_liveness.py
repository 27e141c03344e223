"""liveness: the runner's token survives the trip through an application_name
or a row, and a runner never judged here is never called dead."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint import liveness

runners = st.builds(
    liveness.Runner,
    boot=st.text("0123456789abcdef", min_size=liveness.BOOT_CHARS, max_size=liveness.BOOT_CHARS),
    pidns=st.integers(1, 2**32 - 1), pid=st.integers(1, 4_194_304),
    start=st.integers(0, 2**48))


@settings(max_examples=200, deadline=None)
@given(runners, st.text(max_size=20).filter(lambda t: "." not in t))
def test_a_token_reads_back_as_the_same_runner(runner, host):
    name = f"ivle-maint {runner.token()} on {host}"
    assert liveness.parse(name) == runner


@settings(max_examples=100, deadline=None)
@given(runners)
def test_another_boot_is_unknowable_never_dead(runner):
    mine = liveness.me()
    other = runner if runner.boot != mine.boot else dataclasses.replace(
        runner, boot="f" * liveness.BOOT_CHARS if mine.boot != "f" * liveness.BOOT_CHARS
        else "0" * liveness.BOOT_CHARS)
    judged = liveness.judge(other, "elsewhere")
    assert judged.verdict is liveness.Verdict.UNKNOWABLE
    assert f"ps -p {other.pid}" in judged.text and "on elsewhere" in judged.text


def test_this_process_is_alive_and_a_reused_pid_is_not_it():
    mine = liveness.me()
    assert liveness.judge(mine).verdict is liveness.Verdict.ALIVE
    assert liveness.parse(liveness.token()) == mine
    earlier = dataclasses.replace(mine, start=mine.start - 1)  # same pid, another process
    assert liveness.judge(earlier).verdict is liveness.Verdict.DEAD


def test_an_older_ivle_maints_name_is_unknowable():
    assert liveness.parse("ivle-maint 1.0 on host pid 123") is None
    assert liveness.judge(None, "host").verdict is liveness.Verdict.UNKNOWABLE

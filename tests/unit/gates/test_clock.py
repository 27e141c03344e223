"""gates.clock as properties: whatever the wall clock does between runs
(forward, back, by seconds or by years), rotation keeps the newest dumps and
logs by the order they were made, and a duration is never negative.

The wall clock is faked at its one reader, clock.wall(); files get the
mtimes such a clock gives them.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.context import downtime
from ivle_maint.db import backup
from ivle_maint.gates import clock
from ivle_maint.journal import COMPLETE, Journal
from ivle_maint.logfile import log_stem, prune
from ivle_maint.procedure import STEPS
from ivle_maint.summary import web_down_line

WEB_DOWN = downtime(STEPS)  # stop-web to start-web

START = 1_800_000_000.0  # 2027
# Seconds the wall clock moves between two runs: a little, or a lot, either way.
JUMPS = st.lists(st.one_of(st.floats(-3e8, 3e8), st.floats(-5.0, 60.0)), min_size=1,
                 max_size=12)


def walls(jumps: list[float]) -> list[float]:
    out, now = [], START
    for jump in jumps:
        now += jump
        out.append(now)
    return out


@settings(max_examples=100, deadline=None)
@given(jumps=JUMPS, keep=st.integers(1, 4))
def test_dump_rotation_keeps_the_newest_by_order_whatever_the_clock(jumps: list[float],
                                                                     keep: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory, made = Path(name), []
        for run, now in enumerate(walls(jumps)):
            with mock.patch.object(clock, "wall", return_value=now):
                path = directory / backup.dump_name(directory, "ivle", f"run{run}")
            path.write_bytes(b"PGDMP")
            os.utime(path, (now, now))
            made.append(path)
            backup.rotate(directory, "ivle", keep, taken=path)
            assert path.exists()  # the dump just taken
        assert backup.backups(directory, "ivle") == made[-keep:]


@settings(max_examples=100, deadline=None)
@given(jumps=JUMPS, keep=st.integers(2, 5))
def test_log_rotation_keeps_the_newest_by_order_whatever_the_clock(jumps: list[float],
                                                                    keep: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory, made = Path(name), []
        for now in walls(jumps):
            prune(directory, keep)
            with mock.patch.object(clock, "wall", return_value=now):
                path = directory / f"{log_stem(directory, 'upgrade')}.log"
            path.write_text(f"{now}\n")
            os.utime(path, (now, now))
            made.append(path.name)
        left = sorted(p.name.removesuffix(".gz") for p in directory.iterdir())
        assert left == sorted(made[-keep:])
        assert (directory / made[-1]).exists()  # the newest stays plain


def test_logs_from_before_sequences_count_as_older_whatever_their_mtime(tmp_path: Path) -> None:
    ahead = tmp_path / "upgrade-20990101T000000Z.log"
    ahead.write_text("old\n")
    os.utime(ahead, (4e9, 4e9))
    numbered = tmp_path / f"{log_stem(tmp_path, 'upgrade')}.log"
    numbered.write_text("new\n")
    prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [numbered.name]


READINGS = st.tuples(st.floats(0, 4e9), st.floats(0, 1e7))


@settings(max_examples=200, deadline=None)
@given(start=READINGS, end=READINGS, same_boot=st.booleans())
def test_a_duration_is_never_negative(start: tuple[float, float], end: tuple[float, float],
                                      same_boot: bool) -> None:
    first = clock.Reading(start[0], start[1], "boot-a")
    last = clock.Reading(end[0], end[1], "boot-a" if same_boot else "boot-b")
    seconds = clock.elapsed(first, last)
    if same_boot:
        assert seconds == max(0.0, end[1] - start[1])
    else:  # across a reboot: the wall clocks, when they agree with it
        assert seconds is None or (seconds >= 0 and start[0] <= end[0] - end[1])


@settings(max_examples=100, deadline=None)
@given(jumps=st.lists(st.floats(-1e8, 1e8), min_size=2, max_size=2),
       reboot=st.booleans(), recorded_mono=st.booleans())
def test_downtime_is_never_negative_whatever_the_clock_did(
        jumps: list[float], reboot: bool, recorded_mono: bool) -> None:
    journal = Journal(Path("/nonexistent/journal/x.json"), "1.0", "1.1", "both")
    stop_wall, start_wall = walls(jumps)
    with mock.patch.object(Journal, "save"):
        with mock.patch.object(clock, "wall", return_value=stop_wall):
            journal.begin("stop-web")
            journal.finish("stop-web", "", {})
        if reboot:
            journal.steps["stop-web"].boot = "a boot before"
        with mock.patch.object(clock, "wall", return_value=start_wall):
            journal.begin("start-web")
            journal.finish("start-web", "", {})
    if not recorded_mono:  # a journal of a version that recorded wall times only
        for record in journal.steps.values():
            record.mono_started = record.mono_finished = None
            record.boot = ""
    down = journal.span("stop-web", "start-web")
    assert down is None or down >= 0
    line = web_down_line(journal, STEPS)
    assert line is not None and "-" not in line
    assert ("unknown" in line) == (down is None)
    if recorded_mono and not reboot:
        assert down is not None  # one boot: the monotonic clock always knows


def test_retry_after_never_comes_from_a_journal_whose_clock_went_back(tmp_path: Path) -> None:
    """A recorded web-down time the clocks cannot vouch for (start-web
    'ended' before stop-web began) is no Retry-After: the setting is."""
    import json

    from ivle_maint.config import load_settings
    from ivle_maint.services import maintenance_page

    conf = tmp_path / "maint.conf"
    conf.write_text(f"[node]\nrole = slave\n[paths]\nstate = {tmp_path / 'state'}\n"
                    "[web]\nretry_after = 120\n")
    (tmp_path / "state" / "journal").mkdir(parents=True)
    steps = {"stop-web": {"status": "done", "started": 5000.0, "finished": 5001.0},
             "start-web": {"status": "done", "started": 1000.0, "finished": 1030.0}}
    (tmp_path / "state" / "journal" / "1.0_to_1.1.json").write_text(json.dumps({
        "old": "1.0", "new": "1.1", "role": "slave", "state": "complete", "steps": steps,
        "created": 100}))
    assert maintenance_page.retry_after(load_settings(str(conf)), WEB_DOWN) \
        == (120, "[web] retry_after")


def test_an_archived_journal_never_replaces_one_of_the_same_second(tmp_path: Path) -> None:
    """Two runs of one upgrade created in the same wall-clock second (a clock
    set back): archiving the second keeps the first's record."""
    state = tmp_path / "state"
    for attempt in ("first", "second"):
        # Complete, as run_phases archives it (an unfinished one under an
        # archive's name is a damaged journal).
        journal = Journal(Journal.file_for(state, "1.0", "1.1"), "1.0", "1.1", "both",
                          state=COMPLETE, created=1_800_000_000.5, resume=attempt)
        journal.save()
        journal.archive()
    kept = sorted(Journal.load(p).resume for p in (state / "journal").glob("*.json"))
    assert kept == ["first", "second"]


@settings(max_examples=50, deadline=None)
@given(jumps=st.lists(st.floats(-3e8, 3e8), min_size=2, max_size=6),
       finish=st.lists(st.booleans(), min_size=6, max_size=6))
def test_journals_are_ordered_and_named_by_their_recorded_sequence_whatever_the_clock(
        jumps: list[float], finish: list[bool]) -> None:
    """Upgrades made one after another under a clock that jumps: the
    unfinished ones come out in the order they were made, each has its own
    upgrade id even when two share a wall-clock second, and an archive's
    name carries its sequence, never a stamp."""
    from ivle_maint.upgrade import upgrade_id

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        made = []
        for i, wall in enumerate(walls(jumps)):
            journal = Journal.open(state, f"1.{2 * i}", f"1.{2 * i + 1}", "both")  # no chain
            journal.created = float(int(wall))  # as that clock stamped it
            journal.save()
            if finish[i]:
                journal.set_state("complete")
                journal.archive()
            made.append(journal)
        assert [j.sequence for j in made] == list(range(1, len(made) + 1))
        unfinished = Journal.unfinished(state)
        assert [j.new for j in unfinished] == [j.new for j in made if j.state != "complete"]
        assert len({upgrade_id(j).split("@")[1] for j in made}) == len(made)
        names = [p.name for p in (state / "journal").glob("*.json")]
        assert sorted(clock.sequence_of(n) for n in names if clock.sequence_of(n)) == \
            [j.sequence for j in made if j.state == "complete"]


def test_retry_after_comes_from_the_newest_journal_by_order_not_by_stamp(
        tmp_path: Path) -> None:
    """The last completed upgrade was made under a clock set years back: its
    web-down time is still the one told to clients."""
    from ivle_maint.config import load_settings
    from ivle_maint.services import maintenance_page

    conf = tmp_path / "maint.conf"
    conf.write_text(f"[node]\nrole = slave\n[paths]\nstate = {tmp_path / 'state'}\n"
                    "[web]\nretry_after = 120\n")
    state = tmp_path / "state"
    for version, wall, down in (("1.1", START, 30.0), ("1.2", START - 3e8, 7.0)):
        journal = Journal.open(state, "1.0", version, "slave")
        journal.created = wall  # as that clock stamped it
        for step, at in (("stop-web", 0.0), ("start-web", down)):
            with mock.patch.object(clock, "monotonic", return_value=1000.0 + at):
                journal.begin(step)
                journal.finish(step, "", {})
        journal.set_state("complete")
        journal.archive()
    assert maintenance_page.retry_after(load_settings(str(conf)), WEB_DOWN) \
        == (7, "the upgrade 1.0 -> 1.2")


_FINITE = st.floats(allow_nan=False, allow_infinity=False)


@given(start=_FINITE, end=_FINITE, mono=st.tuples(_FINITE, _FINITE) | st.none(),
       boots=st.sampled_from([("a", "a"), ("a", "b"), ("", "")]))
def test_any_finite_readings_give_a_finite_span_or_none(start, end, mono, boots):
    """Readings a journal may hold (finite: its gate refuses the rest), far
    apart: their difference overflows to inf, which no clock tells (it made
    a Retry-After of int(inf): an OverflowError)."""
    first = clock.Reading(start, None if mono is None else mono[0], boots[0])
    last = clock.Reading(end, None if mono is None else mono[1], boots[1])
    seconds = clock.elapsed(first, last)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)

"""Time: nothing depends on the wall clock moving forward.

The rule:

- The wall clock (wall(), utc_stamp()) is for people: the stamps in file
  names and records say when, and nothing compares them with now or with
  each other to decide anything.  An administrator fixes a clock that was
  hours or years ahead, NTP steps it, a reboot starts with the RTC's idea
  of the time: none of that may delete a file or give a negative number.
- A duration comes from the monotonic clock (reading() records both, with
  the boot it belongs to).  Between readings of one boot, elapsed() is the
  monotonic difference, which never goes backwards.  Across a reboot only
  the wall clocks are left: elapsed() trusts them only when they agree with
  the reboot (the start was before the later boot began); otherwise the
  duration is unknown (None), never negative or absurd.
- Order is a sequence number recorded when a thing is made (a dump's or a
  log's .nNNNNNN in its name: next_sequence()), never an mtime or a stamp.
  oldest_first() sorts by it; things made before sequences existed (no
  number) all count as older than every numbered one.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
SEQUENCE_WIDTH = 6
# ".n000042" just before a file's suffix (.dump, .log, .log.gz; a log of the
# same second may have _2 after it): the order it was made in.
_SEQUENCE = re.compile(rf"\.n(\d{{{SEQUENCE_WIDTH},}})(?:_\d+)?\.[a-z]+(?:\.gz)?$")


def wall() -> float:
    """Seconds since the epoch by the wall clock: for people and identities only."""
    return time.time()


def utc_stamp(fmt: str = "%Y%m%dT%H%M%SZ", when: float | None = None) -> str:
    """The wall time (now, or WHEN) in UTC, for names and records people read."""
    return datetime.fromtimestamp(wall() if when is None else when, UTC).strftime(fmt)


def monotonic() -> float:
    """CLOCK_MONOTONIC: shared by every process of one boot, never set back."""
    return time.monotonic()


def boot_id() -> str:
    """This boot's id: monotonic readings compare only within one boot."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Reading:
    """One instant by both clocks."""

    wall: float
    mono: float | None = None
    boot: str = ""


def reading() -> Reading:
    return Reading(wall(), monotonic(), boot_id())


def elapsed(start: Reading, end: Reading) -> float | None:
    """Seconds from START to END; None when the clocks cannot tell.

    One boot: the monotonic difference.  Across a reboot (or a record
    without monotonic readings): the wall difference, when it is not
    negative and START is before END's boot began.
    """
    if start.boot and start.boot == end.boot and start.mono is not None \
            and end.mono is not None:
        seconds = end.mono - start.mono
        # Finite readings far apart overflow to inf: no span a clock tells.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    seconds = end.wall - start.wall
    if seconds < 0 or not math.isfinite(seconds):
        return None
    if start.boot != end.boot and end.mono is not None and start.wall > end.wall - end.mono:
        return None  # "started" after the machine it ended on had booted: a clock jumped
    return seconds


def sequence_of(name: str) -> int | None:
    """The sequence number recorded in NAME (NAME.nNNNNNN.suffix), if any."""
    found = _SEQUENCE.search(name)
    return int(found.group(1)) if found else None


def next_sequence(names: Iterable[str]) -> int:
    """The number for the next thing made beside NAMES: one more than any."""
    return max((n for n in map(sequence_of, names) if n is not None), default=0) + 1


def sequence_tag(number: int) -> str:
    return f".n{number:0{SEQUENCE_WIDTH}d}"


def oldest_first(items: Iterable[T], name: Callable[[T], str],
                 legacy: Callable[[T], object] | None = None) -> list[T]:
    """ITEMS in the order they were made, by the sequence in their names.

    Items without one (made before sequences were recorded) come first,
    among themselves by LEGACY (default: their name).
    """
    def key(item: T) -> tuple[int, int, object]:
        number = sequence_of(name(item))
        if number is None:
            return (0, 0, legacy(item) if legacy else name(item))
        return (1, number, "")
    return sorted(items, key=key)

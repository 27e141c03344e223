"""The upgrade journal: which steps of an OLD -> NEW upgrade are done.

One JSON file per upgrade under the state directory, rewritten atomically
after every change, so a run killed at any instant leaves either the old
or the new journal, and a rerun continues from the first step not done.
The journal is never read or written through a symlink (safepaths).

Times: each step record holds the wall time (for people) and the
monotonic reading and boot id it was taken with; span() measures with
gates.clock, so a clock set back between dpkg's scripts never makes a
negative duration.

Steps that overlap (runner.py) share the journal: every change and its
save hold the journal's lock, so records are written one at a time and
each file written holds every change made before it.

A step's summary and error carry text from outside (SQL errors, file
names, command lines): they are recorded through gates.text, so that
`status`, the cluster table and a later message show them escaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dpkg_calls import PACKAGE_NAME
from .errors import MaintError
from .gates import clock
from .gates.rewrite import fsync_dir, replace_file
from .gates.text import command, ivle_maint, lines
from .safepaths import read_nofollow, safe_dir
from .versions import check as check_version

if TYPE_CHECKING:
    from .config import Settings

class JournalState(StrEnum):
    """Where an upgrade stands (the file's "state": these strings)."""

    IN_PROGRESS = "in-progress"
    COMPLETE = "complete"
    ABORTED = "aborted"
    # Giving the site back on the old code has begun but not finished: a
    # rerun finishes it and never carries the upgrade forward.
    ABORTING = "aborting"


class StepStatus(StrEnum):
    """Where one step stands (a step record's "status": these strings)."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    # Ctrl-C or SIGTERM stopped it: nothing failed, a rerun does it again.
    INTERRUPTED = "interrupted"


# The members by their short names (tests build journals with them).
IN_PROGRESS, COMPLETE, ABORTED, ABORTING = JournalState
RUNNING, DONE, FAILED, INTERRUPTED = StepStatus
# A skipped step's metric (release_needs.skipped): done, with nothing done.
SKIPPED = "skipped"


@dataclass
class StepRecord:
    status: StepStatus
    started: float
    finished: float | None = None
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # gates.clock: the monotonic readings and the boot they belong to.
    mono_started: float | None = None
    mono_finished: float | None = None
    boot: str = ""
    # The order steps were begun in (1, 2, ...; 0: recorded before orders were).
    order: int = 0

    def start_reading(self) -> clock.Reading:
        return clock.Reading(self.started, self.mono_started, self.boot)

    def end_reading(self) -> clock.Reading | None:
        if self.finished is None:
            return None
        return clock.Reading(self.finished, self.mono_finished, self.boot)


@dataclass
class Journal:
    path: Path
    old: str
    new: str
    role: str
    state: JournalState = JournalState.IN_PROGRESS
    steps: dict[str, StepRecord] = field(default_factory=dict)
    created: float = field(default_factory=clock.wall)  # for people only
    # gates.clock: the order journals were made in (next_sequence over the
    # journal directory; 0: made before sequences were recorded), and a
    # random identity (upgrade_id; "": before identities were recorded).
    # Neither depends on the wall clock.
    sequence: int = 0
    ident: str = ""
    resume: str = "ivle-maint rerun"
    # Where the new migrations are, when not in [paths] migrations (source
    # installs), so that a rerun finds them again.
    migrations: str = ""
    # How NEW's code gets installed, so a rerun can tell whether it is in
    # place: the dpkg package whose scripts run the upgrade, or the source
    # tree `ivle-maint upgrade --source` installs; neither: already there.
    package: str = ""
    source: str = ""
    # True once a run that had the new code in place worked on this upgrade
    # (dpkg's postinst, after ./setup.py install, or the person said so).
    code_new: bool = False
    # The migration keys pending when the migrate step first ran (before it
    # applied anything): what this upgrade applied is told from them, never
    # from times.  None: not recorded yet.
    migrations_pending: list[str] | None = None
    # What the release needs (release_needs.Needs), decided once in the
    # before-phase; None: not decided yet.
    needs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Not a field: never saved, and each journal object has its own.
        self._lock = threading.RLock()

    @staticmethod
    def file_for(state_dir: Path, old: str, new: str) -> Path:
        name = f"{old or 'none'}_to_{new}".replace("/", "_")
        return state_dir / "journal" / f"{name}.json"

    @classmethod
    def open(cls, state_dir: Path, old: str, new: str, role: str) -> Journal:
        """The journal of this upgrade: the existing one, or a new one."""
        path = cls.file_for(state_dir, old, new)
        _undo_killed_archive(path)
        if path.exists():
            return cls.load(path)
        return cls(path, old, new, role, sequence=_next_sequence(path.parent),
                   ident=secrets.token_hex(8))

    @classmethod
    def load(cls, path: Path) -> Journal:
        """The journal in PATH; a damaged or foreign one is a one-line
        MaintError naming the file and what to do, and is left as it is."""
        try:
            raw = read_nofollow(path)
        except OSError as exc:
            raise MaintError(f"{path}: unreadable journal ({exc.strerror or exc}): "
                             "make it readable by root, then run again") from None
        try:
            # NaN and Infinity are no JSON (RFC 8259), though Python reads
            # them: a time of Infinity made every figure from it a traceback.
            data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise _damaged(path, "not UTF-8 text") from None
        except ValueError:
            raise _damaged(path, "not JSON" if raw.strip() else "empty") from None
        return cls(path=path, **_checked(path, data))

    @classmethod
    def unfinished(cls, state_dir: Path) -> list[Journal]:
        """Journals of upgrades that started and neither completed nor aborted
        nor were superseded (see superseded())."""
        found = oldest_first(cls.load(p) for p in sorted((state_dir / "journal").glob("*.json")))
        return [j for i, j in enumerate(found) if j.is_unfinished
                and not superseded(j, found[i + 1:])]

    def archive(self) -> None:
        """Keep a finished journal under its own name; the next run starts anew.

        The name carries its sequence (gates.clock), never a wall time; a
        journal from before sequences gets the next one.  Never over an
        earlier archive."""
        number = self.sequence or _next_sequence(self.path.parent)
        serial = 1
        while True:
            extra = f"_{serial}" if serial > 1 else ""
            target = self.path.with_suffix(f"{clock.sequence_tag(number)}{extra}.json")
            try:
                os.link(self.path, target)
            except FileExistsError:
                serial += 1
                continue
            break
        self.path.unlink()
        fsync_dir(self.path.parent)

    def save(self, *, durable: bool = True) -> None:
        """Replace the file (rewrite.replace_file): a reader sees this record
        or the one before; durable, flushed to disk too."""
        with self._lock:
            data = asdict(self)
            data.pop("path")
            text = json.dumps(data, indent=1, sort_keys=True) + "\n"
            # The state directory is checked each time: a run may be the first.
            safe_dir(self.path.parent.parent, 0o755, "[paths] state")
            safe_dir(self.path.parent, 0o700, "[paths] state")
            replace_file(self.path, text.encode(), mode=0o600, durable=durable)

    @property
    def is_in_progress(self) -> bool:
        return self.state == JournalState.IN_PROGRESS

    @property
    def is_complete(self) -> bool:
        return self.state == JournalState.COMPLETE

    @property
    def is_aborting(self) -> bool:
        return self.state == JournalState.ABORTING

    @property
    def is_aborted(self) -> bool:
        return self.state == JournalState.ABORTED

    @property
    def is_unfinished(self) -> bool:
        """Started, and neither completed nor given back on the old code."""
        return self.is_in_progress or self.is_aborting

    def is_done(self, step: str) -> bool:
        record = self.steps.get(step)
        return record is not None and record.status == StepStatus.DONE

    def is_running(self, step: str) -> bool:
        """Begun by this run and not ended: begin() recorded it, nothing since."""
        record = self.steps.get(step)
        return record is not None and record.status == StepStatus.RUNNING

    def span(self, first: str, last: str) -> float | None:
        """Seconds from step FIRST's start to step LAST's end; None when
        either is missing or unfinished, or the clocks cannot tell."""
        begun, ended = self.steps.get(first), self.steps.get(last)
        end = ended.end_reading() if ended else None
        if begun is None or end is None:
            return None
        return clock.elapsed(begun.start_reading(), end)

    def down_for(self, stop: str, start: str) -> float | None:
        """Seconds the web server was down, from step STOP's start to step
        START's end; None when unknown, or when STOP was skipped: the site
        stayed up (release_needs), and the span between is no outage.  The
        one reader of an upgrade's web-down time (the summary, Retry-After)."""
        stopped = self.steps.get(stop)
        if stopped is None or SKIPPED in stopped.metrics:
            return None
        return self.span(stop, start)

    def begin(self, step: str) -> None:
        with self._lock:
            now = clock.reading()
            order = max((r.order for r in self.steps.values()), default=0) + 1
            self.steps[step] = StepRecord(StepStatus.RUNNING, now.wall, mono_started=now.mono,
                                          boot=now.boot, order=order)
            # Not flushed (two flushes per step, inside the outage): "begun"
            # guards against a killed run, whose written file stays; after a
            # power cut, every service and command this step touched is down
            # anyway, and the step, not yet recorded, is simply run again.
            self.save(durable=False)

    def _end(self, step: str, status: StepStatus) -> StepRecord:
        record, now = self.steps[step], clock.reading()
        record.status, record.finished, record.mono_finished = status, now.wall, now.mono
        if record.boot != now.boot:  # begun in another boot: its readings do not compare
            record.mono_started = record.mono_finished = None
        return record

    def finish(self, step: str, summary: str, metrics: dict[str, Any]) -> None:
        with self._lock:
            record = self._end(step, StepStatus.DONE)
            record.summary, record.metrics, record.error = _recorded(summary), metrics, None
            self.save()

    def fail(self, step: str, error: str) -> None:
        with self._lock:
            self._end(step, StepStatus.FAILED).error = _recorded(error)
            self.save()

    def interrupt(self, step: str, why: str) -> None:
        """STEP was stopped by a signal (WHY: which); a rerun does it again."""
        with self._lock:
            self._end(step, StepStatus.INTERRUPTED).error = _recorded(why)
            self.save()

    def forget(self, steps: list[str]) -> None:
        """Undo the record of steps whose effect was reversed (abort)."""
        with self._lock:
            for step in steps:
                self.steps.pop(step, None)
            if not self.steps:  # abandoned: a retry decides again, on its own package
                self.needs = None
            self.save()

    def set_state(self, state: JournalState) -> None:
        """The one way the state changes: saved at once."""
        with self._lock:
            self.state = state
            self.save()


def superseded(journal: Journal, later: Iterable[Journal]) -> bool:
    """Is JOURNAL, in progress, carried on by a LATER upgrade (from its NEW,
    or taken over from its OLD: taken_over)?

    dpkg installs NEW' over a half-configured NEW (the fixed package after
    a failed postinst): that upgrade's steps are a superset of what was left
    (its migrate applies every pending migration, NEW's too), so once it is
    under way (or complete) it alone holds the schema and finishes the work.
    Abandoned (aborting or aborted), it carries nothing on: JOURNAL is
    unfinished again, and its hold with it."""
    return carried_on_by(journal, later) is not None


def carried_on_by(journal: Journal, later: Iterable[Journal]) -> Journal | None:
    """The LATER upgrade that carries JOURNAL on (see superseded()), or None."""
    if not journal.is_in_progress:
        return None
    return next((k for k in later
                 if (k.old == journal.new and (k.is_in_progress or k.is_complete))
                 or taken_over(journal, k)), None)


def taken_over(journal: Journal, later: Journal) -> bool:
    """Has LATER, an upgrade from JOURNAL's OLD to another version, under
    way, complete or being abandoned, taken over what JOURNAL's
    before-phase did (its new code never installed)?

    dpkg lost after NEW's preinst (a power cut, Ctrl-C: no unwind) keeps
    OLD as the package's version, and the next preinst is `upgrade OLD
    NEW'`.  Its journal exists once its first step began: its before-phase
    redoes JOURNAL's, its after-phase finishes the work, and its
    abandonment gives the site back (start-web) past JOURNAL's hold.
    Abandoned, it carries nothing on: JOURNAL is unfinished again, and
    dpkg's unwind (`postrm abort-upgrade OLD`) abandons it next."""
    return later.old == journal.old and later.new != journal.new and not journal.code_new \
        and not later.is_aborted


def oldest_first(journals: Iterable[Journal]) -> list[Journal]:
    """JOURNALS in the order they were made: by their recorded sequence.
    Those from before sequences come first; among themselves (and only
    there: nothing else records their order) by their creation stamps."""
    return sorted(journals, key=lambda j: (j.sequence, 0.0 if j.sequence else j.created,
                                           j.path.name))


def _undo_killed_archive(path: Path) -> None:
    """archive() links the journal PATH under its archive name, then removes
    PATH; killed in between, both names are one file, which no rewrite may
    replace (it would split them: every later save refused).  The archive
    is undone, the journal as it was before it: the next run decides again."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_nlink < 2:
        return
    for other in path.parent.iterdir():
        if other.name.startswith(f"{path.stem}.n") and other.name.endswith(".json"):
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(other.lstat(), st):
                    other.unlink()
    fsync_dir(path.parent)


def _next_sequence(directory: Path) -> int:
    """One more than any journal's in DIRECTORY: an archive's is in its name,
    a live journal's in its file (a damaged one counts for nothing)."""
    names, numbers = [], [0]
    with contextlib.suppress(OSError):
        for path in directory.glob("*.json"):
            if clock.sequence_of(path.name) is not None:
                names.append(path.name)
                continue
            with contextlib.suppress(OSError, ValueError, UnicodeDecodeError, TypeError):
                number = json.loads(read_nofollow(path).decode("utf-8")).get("sequence", 0)
                if isinstance(number, int) and not isinstance(number, bool):
                    numbers.append(number)
    return max(clock.next_sequence(names), max(numbers) + 1)


def _recorded(text: object) -> str:
    """TEXT as the journal keeps it: through gates.text, continuation lines kept."""
    return "\n".join(lines(text))


# The fields of a journal file and their types (StepRecord's below): what
# this version writes.  Anything else is a damaged file or another
# version's, and is named, never a Python error.
_FIELDS: dict[str, tuple[type, ...]] = {
    "old": (str,), "new": (str,), "role": (str,), "state": (str,), "steps": (dict,),
    "created": (int, float), "resume": (str,), "migrations": (str,), "package": (str,),
    "source": (str,), "code_new": (bool,), "sequence": (int,), "ident": (str,),
    "migrations_pending": (list, type(None)), "needs": (dict, type(None)),
}
_REQUIRED = ("old", "new", "role", "state", "steps")
_STEP_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (str,), "started": (int, float), "finished": (int, float, type(None)),
    "summary": (str,), "metrics": (dict,), "error": (str, type(None)),
    "mono_started": (int, float, type(None)), "mono_finished": (int, float, type(None)),
    "boot": (str,), "order": (int,),
}


_METRIC = (str, int, float, bool, type(None))


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is no JSON number")


def _aside(path: Path) -> str:
    return command("mv", path, str(path) + ".damaged")


def _damaged(path: Path, what: str) -> MaintError:
    return MaintError(
        f"{path}: damaged journal ({what}), left as it is: move it aside ({_aside(path)}), "
        "then run the upgrade again (its steps are safe to repeat; the log shows what was "
        "done)")


def _foreign(path: Path, what: str) -> MaintError:
    return MaintError(
        f"{path}: journal of another ivle-maint version ({what}): finish the upgrade with "
        f"that version, or move the journal aside ({_aside(path)}) and run the upgrade again")


def _checked(path: Path, data: object) -> dict[str, Any]:
    """The journal file's fields as Journal's keywords, every one checked."""
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object")
    for key, value in data.items():
        if key not in _FIELDS:
            raise _foreign(path, f"unknown field {key!a}")
        if (isinstance(value, bool) and bool not in _FIELDS[key]) or \
                not isinstance(value, _FIELDS[key]):
            raise _damaged(path, f"field {key} is a {type(value).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise _damaged(path, f"no {', '.join(missing)}")
    pending = data.get("migrations_pending")
    if pending is not None and not all(isinstance(key, str) for key in pending):
        raise _damaged(path, "field migrations_pending is not a list of keys")
    if data["state"] not in set(JournalState):
        raise _foreign(path, f"unknown state {data['state']!a}")
    _check_values(path, data)
    steps = {}
    for name, record in data["steps"].items():
        if not isinstance(record, dict):
            raise _damaged(path, f"step {name!a} is not an object")
        for key, value in record.items():
            if key not in _STEP_FIELDS:
                raise _foreign(path, f"unknown field {key!a} of step {name!a}")
            if isinstance(value, bool) or not isinstance(value, _STEP_FIELDS[key]):
                raise _damaged(path, f"field {key} of step {name!a} is a "
                                     f"{type(value).__name__}")
        if "status" not in record or "started" not in record:
            raise _damaged(path, f"step {name!a} has no status or start")
        if record["status"] not in set(StepStatus):
            raise _foreign(path, f"unknown status {record['status']!a} of step "
                                 f"{name!a}")
        for key, value in record.get("metrics", {}).items():
            # What a step records (Outcome.metrics), and what the summary's
            # readers take: a JSON scalar, or a list of keys.
            if not isinstance(value, _METRIC) and not (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise _damaged(path, f"metric {key!a} of step {name!a} is a "
                                     f"{type(value).__name__} of another shape")
        step = StepRecord(**{**record, "status": StepStatus(record["status"])})
        # Written before the text gate, or by hand: shown escaped all the same.
        step.summary = _recorded(step.summary)
        step.error = None if step.error is None else _recorded(step.error)
        steps[name] = step
    return {**data, "state": JournalState(data["state"]), "steps": steps}


# An archive's name after the live one's stem: its sequence (or, before
# sequences, its creation second) and a serial (Journal.archive).
_ARCHIVE = r"\.(?:n\d{6,}|\d+)(?:_\d+)?\.json"


def _check_values(path: Path, data: dict[str, Any]) -> None:
    """What the journal's text fields name, checked as a run checks them
    when it writes them: a rerun reopens the journal by its versions and
    runs dpkg-query, setup.py or migrations by the rest."""
    for key in ("old", "new"):
        if key == "old" and data[key] == "":  # recorded before OLD was required
            continue
        try:
            check_version(data[key])
        except MaintError:
            raise _damaged(path, f"field {key} is no version: {data[key][:40]!a}") from None
    package = data.get("package", "")
    if package and not PACKAGE_NAME.fullmatch(package):
        raise _damaged(path, f"field package is no package name: {package[:40]!a}")
    for key in ("source", "migrations"):
        if data.get(key) and not os.path.isabs(data[key]):
            raise _damaged(path, f"field {key} is no absolute path: {data[key][:60]!a}")
    _check_name(path, data)


def _check_name(path: Path, data: dict[str, Any]) -> None:
    """The file is the upgrade's own (a copy or a hand edit under another
    name would have a rerun begin a second upgrade beside it): its live
    name, or, finished, one of its archives'."""
    stem = Journal.file_for(path.parent.parent, data["old"], data["new"]).stem
    finished = data["state"] in (JournalState.COMPLETE, JournalState.ABORTED)
    if path.name == f"{stem}.json" or (
            finished and re.fullmatch(re.escape(stem) + _ARCHIVE, path.name)):
        return
    own = "not its file name" if finished else f"whose journal is {stem}.json"
    raise _damaged(path, f"it records the upgrade {data['old'] or '(none)'} -> {data['new']}, "
                         f"{own}")


def unfinished_matching(settings: Settings, *, old: str | None = None,
                        new: str | None = None) -> list[Journal]:
    """Unfinished upgrades from OLD or to NEW (dpkg's abort calls give one;
    `rerun --from OLD --to NEW` both)."""
    return [j for j in Journal.unfinished(settings.path_of("state"))
            if (old is None or j.old == old) and (new is None or j.new == new)]


def unfinished(settings: Settings, *, old: str | None = None,
               new: str | None = None) -> Journal | None:
    """The one upgrade left unfinished on this node (from OLD, to NEW when
    given: `rerun --from OLD --to NEW`), if any.  Several (a fixed
    package's upgrade being abandoned over the one it carried on): a
    MaintError naming each with the rerun that chooses it."""
    journals = unfinished_matching(settings, old=old, new=new)
    if len(journals) > 1:
        words = [("rerun", "--from", j.old, "--to", j.new) for j in journals]
        names = ", ".join(f"{j.old or '(none)'} -> {j.new}"
                          + (" being abandoned" if j.is_aborting else "") for j in journals)
        raise MaintError(f"several unfinished upgrades ({names}); continue one: "
                         + " or ".join(f"'{ivle_maint(*w)}'" for w in words),
                         resume=command("ivle-maint", *words[-1]))
    return journals[0] if journals else None

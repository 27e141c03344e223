"""Journal.load: whatever a journal file holds, a Journal or one line.

The line names the file and what to do; it never carries Python's own
words (KeyError, JSONDecodeError, an unexpected keyword argument) and
never a raw control character from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.journal import Journal

PYTHON_WORDS = ("KeyError", "JSONDecodeError", "TypeError", "Expecting", "__init__",
                "keyword argument", "object has no attribute")

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def _valid(tmp: Path) -> tuple[Path, dict[str, Any]]:
    journal = Journal.open(tmp, "1.0", "1.1", "both")
    journal.begin("stop-web")
    journal.finish("stop-web", "stopped", {"seconds": 1.0})
    journal.begin("migrate")
    journal.fail("migrate", "boom")
    return journal.path, json.loads(journal.path.read_text())


def _loads_or_says_one_line(path: Path) -> None:
    try:
        Journal.load(path)
    except MaintError as exc:
        line = str(exc)
        assert line.startswith(f"{path}: "), line
        assert "\n" not in line and "\r" not in line and "\x1b" not in line, line
        assert not any(word in line for word in PYTHON_WORDS), line
        assert "run the upgrade again" in line, line


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64))
def test_any_bytes_load_or_are_one_line(tmp_path_factory: Any, data: bytes) -> None:
    path, _ = _valid(tmp_path_factory.mktemp("j"))
    path.write_bytes(data)
    _loads_or_says_one_line(path)


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(["old", "new", "role", "state", "steps", "created", "resume",
                            "code_new", "package", "a-future-field"]),
       value=JSON, drop=st.booleans())
def test_any_field_changed_or_dropped_loads_or_is_one_line(tmp_path_factory: Any, key: str,
                                                           value: Any, drop: bool) -> None:
    path, data = _valid(tmp_path_factory.mktemp("j"))
    if drop:
        data.pop(key, None)
    else:
        data[key] = value
    path.write_text(json.dumps(data))
    _loads_or_says_one_line(path)


@settings(max_examples=100, deadline=None)
@given(step=st.sampled_from(["stop-web", "migrate", "x\nivle-maint: error: forged"]),
       key=st.sampled_from(["status", "started", "finished", "summary", "metrics", "error",
                            "state"]),
       value=JSON, drop=st.booleans())
def test_any_step_record_changed_loads_or_is_one_line(tmp_path_factory: Any, step: str,
                                                      key: str, value: Any,
                                                      drop: bool) -> None:
    path, data = _valid(tmp_path_factory.mktemp("j"))
    record = data["steps"].setdefault(step, {"status": "done", "started": 1.0})
    if drop:
        record.pop(key, None)
    else:
        record[key] = value
    path.write_text(json.dumps(data))
    _loads_or_says_one_line(path)


def test_a_journal_this_version_wrote_loads_as_it_was(tmp_path: Path) -> None:
    path, data = _valid(tmp_path)
    journal = Journal.load(path)
    assert journal.steps["migrate"].error == "boom" and journal.state == data["state"]


def test_unreadable_journal_is_a_one_line_error(tmp_path: Path) -> None:
    path = Journal.file_for(tmp_path, "1.0", "1.1")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    try:
        Journal.load(path)
    except MaintError as exc:
        assert str(exc).startswith(f"{path}: damaged journal (not JSON)")
    else:
        raise AssertionError("loaded")


def test_threads_writing_records_at_once_lose_none(tmp_path: Path) -> None:
    """Steps that overlap share the journal: every record, and the file
    written last, holds every change (without the lock, a save iterating the
    records while another thread adds one fails, or an earlier file wins)."""
    import threading

    journal = Journal.open(tmp_path, "1.0", "1.1", "both")
    start = threading.Barrier(4, timeout=60)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            start.wait()
            for step in range(15):
                name = f"step-{number}-{step}"
                journal.begin(name)
                journal.finish(name, "ok", {"n": step})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    on_disk = Journal.load(journal.path)
    assert len(on_disk.steps) == 60 and all(on_disk.is_done(name) for name in on_disk.steps)
    assert sorted(r.order for r in on_disk.steps.values()) == list(range(1, 61))


# What a field of a journal file may be changed to: versions and names dpkg
# gives, and what it never gives (a hand edit, a copy, a bit flipped).
_TEXTS = st.sampled_from(["1.0", "1.1", "1.2", "0.9", "1:1.1", "", "none", "1.1\n", "-W",
                          "ivle", "ivle x", "/usr/src/ivle", "relative/dir", "1.0-",
                          "1." + "1" * 200]) | st.text(max_size=6)
_NAMES = st.sampled_from(["1.0_to_1.1.json", "1.0_to_1.2.json", "none_to_1.1.json",
                          "1.0_to_1.1.n000007.json", "1.0_to_1.1.n000007_2.json",
                          "1.0_to_1.1.1577836800.json", "1.0_to_1.1.2.json",
                          "1.0_to_1.1.backup.json", "copy.json"])


def _name_agrees(name: str, old: str, new: str, finished: bool) -> bool:
    """The live name of OLD -> NEW's journal, or (finished) one of its archives'."""
    import re

    stem = Journal.file_for(Path("s"), old, new).stem
    return name == f"{stem}.json" or (finished and re.fullmatch(
        re.escape(stem) + r"\.(?:n\d{6,}|\d+)(?:_\d+)?\.json", name) is not None)


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(["old", "new", "package", "source",
                                                "migrations"]), _TEXTS, max_size=2),
       state=st.sampled_from(["in-progress", "complete", "aborting", "aborted"]),
       name=_NAMES)
def test_a_journal_that_loads_names_the_upgrade_its_file_is_named_after(
        tmp_path_factory: Any, changes: dict[str, str], state: str, name: str) -> None:
    """A rerun reopens a journal by its versions (Journal.file_for): one
    whose versions are none, or disagree with its name (a copy, a hand
    edit), had `dpkg --configure -a` run a second upgrade beside it while
    its hold kept the web server down for ever; a package or a path that is
    none went to dpkg-query's argv and the printed commands."""
    from ivle_maint.versions import check

    path, data = _valid(tmp_path_factory.mktemp("j"))
    data.update(changes, state=state)
    path.unlink()
    path = path.with_name(name)
    path.write_text(json.dumps(data))
    try:
        journal = Journal.load(path)
    except MaintError:
        _loads_or_says_one_line(path)
        return
    check(journal.new)
    assert journal.old == "" or check(journal.old) is None
    assert _name_agrees(path.name, journal.old, journal.new,
                        journal.state in ("complete", "aborted")), (path.name, journal)
    assert journal.package == "" or (journal.package[0].isalnum() and
                                     set(journal.package) <= set("abcdefghijklmnopqrstuvwxyz"
                                                                 "0123456789+-."))
    for where in (journal.source, journal.migrations):
        assert where == "" or where.startswith("/"), where


SETUP = "from pathlib import Path\nfrom ivle_maint.journal import Journal"


def test_an_archive_killed_at_any_point_leaves_a_journal_the_next_run_can_write(tmp_path):
    """archive() (a finished upgrade started again) killed at each of its
    steps in turn: the next run's journal is the one from before or a new
    one, never a second name of an archive (which every save would refuse:
    'has 2 hard links'), and its archive, done again, is the only one."""
    import os
    import shutil

    from support.kill_points import killed_at

    point = 0
    while True:
        point += 1
        state = tmp_path / str(point)
        journal = Journal.open(state, "1.0", "1.1", "both")
        journal.begin("stop-web")
        journal.finish("stop-web", "stopped", {"seconds": 1.0})
        killed = killed_at(point, SETUP, "Journal.open(Path(sys.argv[2]), '1.0', '1.1', "
                           "'both').archive()", str(state))
        again = Journal.open(state, "1.0", "1.1", "both")  # the next run
        again.begin("start-web")
        again.save()
        again.archive()
        names = sorted(p.name for p in (state / "journal").iterdir())
        assert all(os.lstat(state / "journal" / n).st_nlink == 1 for n in names), (point, names)
        archived = sorted(sorted(json.loads((state / "journal" / n).read_text())["steps"])
                          for n in names)
        # The killed archive undone (the journal went on) or done (a new one began).
        assert archived in ([["start-web", "stop-web"]], [["start-web"], ["stop-web"]]), \
            (point, archived)
        assert killed or len(archived) == 2
        shutil.rmtree(state)
        if not killed:
            break
    assert point > 3


@settings(max_examples=60, deadline=None)
@given(step=st.sampled_from(["stop-web", "migrate", "media-version", "start-web"]),
       key=st.sampled_from(["migrations_applied", "media_new", "media_old", "hold",
                            "consoles_stopped", "skipped", "seconds", "another"]),
       value=JSON, status=st.sampled_from(["done", "failed"]))
def test_any_metric_recorded_loads_and_is_summarised_or_is_one_line(
        tmp_path_factory: Any, step: str, key: str, value: Any, status: str) -> None:
    """What `status` and the end of a run print from a journal (summary_lines):
    before, a migrations_applied holding a number loaded, then made `status`
    a TypeError traceback."""
    from ivle_maint.procedure import STEPS
    from ivle_maint.summary import summary_lines

    path, data = _valid(tmp_path_factory.mktemp("j"))
    data["steps"][step] = {"status": status, "started": 1.0, "finished": 2.0,
                           "metrics": {key: value}}
    path.write_text(json.dumps(data))
    _loads_or_says_one_line(path)
    try:
        journal = Journal.load(path)
    except MaintError:
        return
    assert summary_lines(journal, STEPS)[0].startswith("upgrade 1.0 -> 1.1: ")

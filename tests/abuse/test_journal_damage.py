"""A damaged journal, or one another ivle-maint version wrote.

Whatever the file holds, every command that reads it answers with one
line naming the file and what to do, never Python's own words (KeyError,
JSONDecodeError, an unexpected keyword argument), and leaves the file as
it is; the advice, followed, finishes the upgrade.  A journal that cannot
be written (a full state directory at the postinst) names the way to
resume, and the rerun still knows that the new code is in place.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_sandbox import mountns
from support.abuse_helpers import error_lines, fill, resume_line
from support.upgrade_helpers import (
    ALL_KEYS,
    OLD_KEYS,
    at_version_1_0,
    cli,
    final_state,
    journal,
    marker_keys,
    postinst,
    preinst,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

PYTHON_WORDS = ("KeyError", "JSONDecodeError", "TypeError", "ValueError", "Expecting",
                "__init__", "keyword argument", "char 0")


def _valid(node: Any) -> dict[str, Any]:
    path = node.state_dir / "journal" / "1.0_to_1.1.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# (what the file holds, made from the valid journal; what the line says)
DAMAGE = {
    "empty": (lambda d: b"", "damaged journal (empty)"),
    "not JSON": (lambda d: b"{not json", "damaged journal (not JSON)"),
    "a list": (lambda d: b"[1, 2]\n", "damaged journal (a JSON list, not an object)"),
    "not UTF-8": (lambda d: b"\xff\xfe", "damaged journal (not UTF-8 text)"),
    "no steps": (lambda d: json.dumps({k: v for k, v in d.items() if k != "steps"}).encode(),
                 "damaged journal (no steps)"),
    "a newer version's field": (lambda d: json.dumps({**d, "phase_plan": [1]}).encode(),
                                "journal of another ivle-maint version (unknown field "
                                "'phase_plan')"),
    "a newer version's state": (lambda d: json.dumps({**d, "state": "paused"}).encode(),
                                "journal of another ivle-maint version (unknown state "
                                "'paused')"),
    "a step record of another shape": (
        lambda d: json.dumps({**d, "steps": {"stop-web": {"state": "done"}}}).encode(),
        "journal of another ivle-maint version (unknown field 'state' of step 'stop-web')"),
}


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    errors = error_lines(done)
    assert len(errors) == 1, done.stderr
    assert not any(word in done.stderr for word in PYTHON_WORDS), done.stderr
    return errors[0]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_journal_is_one_line_and_left_as_it_is(node_factory: Any,
                                                         damage: str) -> None:
    node = at_version_1_0(node_factory(users=2, consoles=1))
    assert preinst(node).returncode == 0
    path = node.state_dir / "journal" / "1.0_to_1.1.json"
    make, expected = DAMAGE[damage]
    text = make(_valid(node))
    path.write_bytes(text)
    for args in (("status",), ("rerun",)):
        done = cli(node, *args)
        assert done.returncode == 1, done.stderr
        line = _one_line(done)
        assert line.startswith(f"ivle-maint: error: {path}: {expected}"), line
        assert f"mv {shlex.quote(str(path))} " in line and "run the upgrade again" in line
    assert path.read_bytes() == text


def test_following_the_advice_for_a_damaged_journal_finishes_the_upgrade(
        node_factory: Any) -> None:
    node = at_version_1_0(node_factory(users=2, consoles=1))
    assert preinst(node).returncode == 0
    path = node.state_dir / "journal" / "1.0_to_1.1.json"
    path.write_bytes(b"{not json")
    unpack(node)
    failed = postinst(node)
    assert failed.returncode == 1
    line = _one_line(failed)
    move = line.split("move it aside (", 1)[1].split(")", 1)[0]
    subprocess.run(shlex.split(move), check=True)
    done = postinst(node)  # the upgrade again: dpkg --configure -a
    assert done.returncode == 0, done.stderr
    assert final_state(node)["marker"] == ALL_KEYS
    assert node.service_running("apache2")


# A field of the preinst's journal changed to what no run records: another
# upgrade's versions (a copy, a hand edit), no version, no package name, a
# relative path; or the file kept under another upgrade's name.
VALUE_DAMAGE = st.one_of(
    st.tuples(st.sampled_from(["old", "new"]),
              st.sampled_from(["1.2", "0.9", "", "1.1\n", "none", "1.1-", "1." + "1" * 200])),
    st.tuples(st.just("package"), st.sampled_from(["-W", "ivle x", "Ivle", "i"])),
    st.tuples(st.sampled_from(["source", "migrations"]), st.sampled_from(["tree", "./x"])),
    st.tuples(st.just("file name"), st.sampled_from(["1.0_to_1.2.json", "1.0_to_1.1.2.json",
                                                     "1.0_to_1.1.n000009.json"])),
)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(damage=VALUE_DAMAGE)
def test_a_journal_naming_another_upgrade_or_nothing_stops_the_postinst_at_once(
        node_factory: Any, damage: tuple[str, str]) -> None:
    """Before: a journal saying 1.0 -> 1.2 in 1.0_to_1.1.json had `dpkg
    --configure -a` run a second upgrade beside it (migrations applied),
    then its hold kept the web server down for ever, the damage never
    named; 'new': '1.1\\n' completed and split every `status` line.  Now:
    one line naming the file and the way on, nothing migrated, no second
    journal, the file as it was; the advice, followed, finishes."""
    node = at_version_1_0(node_factory(users=2, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node)
    path = node.state_dir / "journal" / "1.0_to_1.1.json"
    key, value = damage
    if key == "file name":
        path = path.rename(path.with_name(value))
    else:
        path.write_text(json.dumps({**_valid(node), key: value}))
    text = path.read_bytes()
    failed = postinst(node)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = _one_line(failed)
    assert line.startswith(f"ivle-maint: error: {path}: damaged journal ("), line
    assert path.read_bytes() == text
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert marker_keys(node) in ([], OLD_KEYS)
    move = line.split("move it aside (", 1)[1].split(")", 1)[0]
    subprocess.run(shlex.split(move), check=True)
    done = postinst(node)
    assert done.returncode == 0, done.stderr
    assert final_state(node)["marker"] == ALL_KEYS and node.service_running("apache2")


@contextmanager
def full(directory: Path) -> Iterator[Path]:
    """DIRECTORY on a tiny tmpfs holding what it held, filled to the last
    byte; yields the filler to remove."""
    mountns.require_private(directory)
    keep = Path(tempfile.mkdtemp())
    shutil.copytree(directory, keep / "d", symlinks=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs",
                    str(directory)], check=True)
    try:
        shutil.copytree(keep / "d", directory, symlinks=True, dirs_exist_ok=True)
        filler = directory / "filler"
        fill(filler)
        yield filler
    finally:
        mountns.umount(directory, lazy=True)
        shutil.rmtree(keep)


def test_a_damaged_record_of_the_decision_gets_the_whole_procedure(node_factory: Any) -> None:
    """The preinst's record of what the release needs (the journal's `needs`),
    damaged: a `basis` that is no mapping beside a need said no to.  Before:
    the postinst ended in a traceback (release_needs.confirm); now the
    decision reads as another version's, and IVLE's whole procedure runs."""
    node = at_version_1_0(node_factory(users=2, consoles=1))
    assert preinst(node).returncode == 0
    path = node.state_dir / "journal" / "1.0_to_1.1.json"
    data = json.loads(path.read_text())
    data["needs"] = {**data["needs"], "basis": ["x"], "jail": False}
    path.write_text(json.dumps(data))
    unpack(node)
    done = postinst(node)
    assert done.returncode == 0, done.stderr
    assert not any(word in done.stderr for word in PYTHON_WORDS), done.stderr
    assert "rebuild the jail: ivle-buildjail" in done.stderr, done.stderr
    assert final_state(node)["marker"] == ALL_KEYS
    assert node.service_running("apache2")


@pytest.mark.parametrize("resume", ["dpkg --configure -a", "ivle-maint rerun"])
def test_a_full_state_directory_at_the_postinst_says_how_to_resume(node_factory: Any,
                                                                   resume: str) -> None:
    node = at_version_1_0(node_factory(users=1, consoles=0))
    assert preinst(node).returncode == 0
    unpack(node)
    with full(node.state_dir) as filler:
        failed = postinst(node)
        assert failed.returncode == 1
        assert "No space left on device" in _one_line(failed)
        assert resume_line(failed.stderr) == "dpkg --configure -a  (or: ivle-maint rerun)"
        filler.unlink()  # room made
        assert journal(node)["code_new"] is True  # the rerun knows the code is 1.1's
        done = postinst(node) if resume.startswith("dpkg") else cli(node, "rerun")
        assert done.returncode == 0, done.stderr
        assert final_state(node)["marker"] == ALL_KEYS
        assert node.service_running("apache2")

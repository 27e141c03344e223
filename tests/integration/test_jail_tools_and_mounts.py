"""IVLE's jail tools walk their trees across mounts: ivle-buildjail's
rsync --delete empties whatever is mounted in the template (or
template_build), ivle-remakeuser whatever is mounted in a user's jail
source outside home/LOGIN.  A student's home bound (or propagated) there,
a tmpfs, a file bound over a file, at a generated depth and place: the
tool is never run (one line naming the mount, gates/mounted.py) and what
the mount shows is kept whole.  Before, the home was emptied.  A home on
a filesystem of its own at src/LOGIN/home/LOGIN (the tool keeps it) is no
reason to refuse."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.jails.template import rebuild_template
from ivle_maint.jails.users import remake_user_jails
from ivle_maint.mountinfo import mounts_below
from ivle_maint.output import RecordingReporter
from ivle_sandbox.node import install_version

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

EXAMPLES = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
DIRS = st.lists(st.sampled_from(["home", "tmp", "usr", "a b", "x\ny", "-rf"]), max_size=3)
KINDS = st.sampled_from(["bind", "tmpfs", "file"])
WORK = "print('mine')\n"


@pytest.fixture
def master(node_factory: Any) -> Any:
    """Jails not mounted, as after the unmount step; shared by a test's examples."""
    node = node_factory(users=3, role="master", mount=False, services=False)
    install_version(node, "1.1")
    return node


@contextmanager
def mounted_in(where: Path, kind: str, scratch: Path) -> Iterator[Path]:
    """A student's home (WORK in work.py) mounted at WHERE as KIND; the
    file that must survive."""
    student = scratch / uuid.uuid4().hex
    student.mkdir(parents=True)
    (student / "work.py").write_text(WORK)
    where.mkdir(parents=True, exist_ok=True)
    made = []
    if kind == "file":
        target = where / f"f-{uuid.uuid4().hex[:6]}"
        target.write_text("")
        made.append(target)
        subprocess.run(["mount", "--bind", str(student / "work.py"), str(target)], check=True)
        point, survivor = target, student / "work.py"
    elif kind == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], check=True)
        (where / "work.py").write_text(WORK)
        point, survivor = where, where / "work.py"
    else:
        subprocess.run(["mount", "--bind", str(student), str(where)], check=True)
        point, survivor = where, student / "work.py"
    try:
        yield survivor
    finally:
        subprocess.run(["umount", str(point)], check=True)
        for path in made:
            path.unlink()
    assert not mounts_below(str(scratch.parent))


def refusal(run: Callable[[], object]) -> str:
    """RUN's one-line error ("" when it did not refuse: checked after the files)."""
    try:
        run()
    except MaintError as exc:
        return str(exc)
    return ""


@EXAMPLES
@given(tree=st.sampled_from(["template", "template_build"]), dirs=DIRS, kind=KINDS)
def test_a_mount_in_the_template_stops_the_rebuild_before_it_runs(
        master: Any, tmp_path: Path, tree: str, dirs: list[str], kind: str) -> None:
    top = master.template if tree == "template" else master.template_build
    where = top.joinpath(*dirs) if dirs else top / "home"
    before = master.template_version()
    node_settings = load_settings(str(master.maint_conf))
    with mounted_in(where, kind, tmp_path / "students") as survivor:
        message = refusal(lambda: rebuild_template(node_settings, RecordingReporter()))
        assert survivor.read_text() == WORK  # nothing emptied through the mount
    assert "\n" not in message and "is mounted inside" in message, message
    assert master.template_version() == before  # the tool never ran


@EXAMPLES
@given(dirs=st.lists(st.sampled_from(["tmp", "home", ".ivle", "x\ny", "bob"]), max_size=3),
       kind=KINDS)
def test_a_mount_in_a_jail_source_outside_the_home_stops_the_remake(
        master: Any, tmp_path: Path, dirs: list[str], kind: str) -> None:
    login = master.users[0].login
    src = master.jails_src / login
    if dirs[:2] == ["home", login]:
        dirs = dirs[1:]
    where = src.joinpath(*dirs) if dirs else src / "tmp"
    node_settings = load_settings(str(master.maint_conf))
    with mounted_in(where, kind, tmp_path / "students") as survivor:
        message = refusal(lambda: remake_user_jails(node_settings, RecordingReporter()))
        assert survivor.read_text() == WORK
    assert "\n" not in message and "is mounted inside" in message, message


def test_a_home_of_its_own_filesystem_is_rebuilt_around(master: Any, tmp_path: Path) -> None:
    login = master.users[1].login
    home = master.jails_src / login / "home" / login
    kept = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    scratch = tmp_path / "fs"
    scratch.mkdir()
    for name, data in kept.items():
        (scratch / name).write_bytes(data)
    (scratch / "work.py").write_text(WORK)
    subprocess.run(["mount", "--bind", str(scratch), str(home)], check=True)
    try:
        result = remake_user_jails(load_settings(str(master.maint_conf)), RecordingReporter())
        assert (home / "work.py").read_text() == WORK
    finally:
        subprocess.run(["umount", str(home)], check=True)
    assert result.rebuilt == result.total
    assert os.path.isdir(home)

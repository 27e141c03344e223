"""The rollback's trees (the jail template set aside, the one a rollback
replaces, a killed run's partial copy) go through rollback/trees.py's
remove_tree.  A jail is bind mounts of one filesystem: a mount anywhere in
such a tree, at any depth, of any kind (a student's home bound there, a
tmpfs, a file bound over a file, the tree itself a mount), reached
directly or through a symlink, is refused with one line and what it shows
is kept whole; a tree with no mount goes."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.rollback import restore
from ivle_maint.rollback.trees import remove_tree

pytestmark = pytest.mark.needs_root

NAMES = st.sampled_from(["home", "alice", "tmp", "a b", "x\ny", "-rf", "..."])
KINDS = st.sampled_from(["bind", "tmpfs", "file", "tree"])


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def _unmount_below(top: Path) -> None:
    from ivle_maint.mountinfo import mounts_below, read

    real = os.path.realpath(top)
    here = [m for m in read() if m.mountpoint == real]
    for mount in [*mounts_below(real), *here]:
        subprocess.run(["umount", "-l", mount.mountpoint], check=False)


def _tree(top: Path, parts: list[str]) -> Path:
    """TOP with files at every level down to PARTS; the deepest directory."""
    where = top
    (where / "etc").mkdir(parents=True)
    (where / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (where / "f").write_text("top")
    for part in parts:
        where = where / part
        where.mkdir(exist_ok=True)
        (where / "f").write_text(part)
    return where


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(NAMES, min_size=0, max_size=4), kind=KINDS, via_link=st.booleans())
def test_a_mount_anywhere_in_a_tree_is_refused_and_what_it_shows_is_kept(
        tmp_path: Path, parts: list[str], kind: str, via_link: bool) -> None:
    run = tmp_path / uuid.uuid4().hex
    top = run / "template.rolled-back"
    deepest = _tree(top, parts)
    student = run / "student"  # a student's home, on the same filesystem
    student.mkdir()
    (student / "work.py").write_text("print('mine')\n")
    if kind == "bind":
        _mount("--bind", str(student), str(deepest))
    elif kind == "tmpfs":
        _mount("-t", "tmpfs", "tmpfs", str(deepest))
        (deepest / "work.py").write_text("print('mine')\n")
    elif kind == "file":
        _mount("--bind", str(student / "work.py"), str(deepest / "f"))
    else:  # the tree itself a bind mount of the student's home
        _mount("--bind", str(student), str(top))
    given_path = top
    if via_link:
        given_path = run / "link"
        given_path.symlink_to(top)
    try:
        with pytest.raises(MaintError) as caught:
            remove_tree(given_path)
        shown = deepest / "work.py" if kind == "tmpfs" else student / "work.py"
        assert shown.read_text() == "print('mine')\n"  # nothing removed through the mount
        assert "\n" not in str(caught.value) and "is mounted inside" in str(caught.value)
    finally:
        _unmount_below(top)
    assert (student / "work.py").read_text() == "print('mine')\n"
    remove_tree(given_path)  # no mount left: it goes
    assert not os.path.lexists(top if not via_link else given_path)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(NAMES, min_size=0, max_size=4))
def test_a_tree_with_no_mount_goes_whole(tmp_path: Path, parts: list[str]) -> None:
    top = tmp_path / uuid.uuid4().hex / "template.restore-x"
    _tree(top, parts)
    outside = top.parent / "outside"
    outside.write_text("kept\n")
    (top / "link-out").symlink_to(outside)
    remove_tree(top)
    assert not os.path.lexists(top)
    assert outside.read_text() == "kept\n"  # a symlink in it removed, never followed


def test_a_rollback_putting_the_template_back_never_empties_a_home_bound_in_it(
        tmp_path: Path) -> None:
    """The rollback's rebuild-jail (restore.template): the live template,
    with a student's home bound (or propagated) inside it, is renamed
    aside and removed: before, rm --one-file-system went through the bind
    mount (the same device) and emptied the home."""
    from types import SimpleNamespace

    live = tmp_path / "__base__"
    aside = tmp_path / "__base__.restore-upgrade_x"
    for tree in (live, aside):
        (tree / "home" / "alice").mkdir(parents=True)
        (tree / "etc").mkdir()
    home = tmp_path / "src" / "alice" / "home" / "alice"
    home.mkdir(parents=True)
    (home / "work.py").write_text("print('mine')\n")
    point = SimpleNamespace(template={"path": str(live), "aside": str(aside)})
    ctx = SimpleNamespace(rollback=point)
    _mount("--bind", str(home), str(live / "home" / "alice"))
    try:
        with pytest.raises(MaintError) as caught:
            restore.template(ctx)  # type: ignore[arg-type]
        assert (home / "work.py").read_text() == "print('mine')\n"
        assert "is mounted inside" in str(caught.value)
        assert (live / "etc").is_dir()  # the kept template is live
    finally:
        _unmount_below(tmp_path)
    assert restore.template(ctx) is not None  # type: ignore[arg-type]
    assert (home / "work.py").read_text() == "print('mine')\n"
    assert not (tmp_path / "__base__.rolled-back").exists()

"""Jail unmounts against a tree that changes under them (gate: jails/mounts.py).

Real mounts in the test run's private mount namespace; the faults are
injected where a student (or the master's rebuild, over NFS) would act:
between reading the mount table and the umount2 syscall.  Whatever
happens meanwhile, nothing outside the jail mounts directory is unmounted.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint import mountinfo
from ivle_maint.jails import mounts
from ivle_maint.output import RecordingReporter
from ivle_sandbox import mountns

pytestmark = [pytest.mark.needs_root]

# A directory name a student may choose (no '/', not '.', '..').
NAME = st.binary(min_size=1, max_size=12).map(
    lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")).filter(
    lambda b: b not in (b".", b"..")).map(os.fsdecode)


def _points(top: Path) -> set[str]:
    return {m.mountpoint for m in mountinfo.read() if mountinfo.is_at_or_below(m.mountpoint, top)}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs to play in, and everything below it unmounted afterwards."""
    root = tmp_path / "w"
    root.mkdir()
    mountns.require_private(root)
    _tmpfs(root)
    yield root
    _unmount_below(root)
    _libc.umount2(os.fsencode(root), 2)  # MNT_DETACH


_libc = ctypes.CDLL(None, use_errno=True)


def _unmount_below(root: Path) -> None:
    """Everything mounted below root, deepest first (names of any bytes)."""
    for _ in range(10):
        left = mountinfo.mounts_below(root)
        if not left:
            return
        for mount in left:
            _libc.umount2(os.fsencode(mount.mountpoint), 2)  # MNT_DETACH


def _tmpfs(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.tuples(NAME, NAME), lazy=st.booleans(),
       depth=st.integers(min_value=0, max_value=2))
def test_a_symlink_swapped_in_before_the_umount_reaches_nothing_outside(
    world: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[str, str], lazy: bool,
    depth: int,
) -> None:
    """A student's mount (fusermount, say) at HOME/PARENT/LEAF in a jail;
    just before ivle-maint's umount2, PARENT becomes a symlink to a
    directory outside the jails where LEAF is mounted too (/boot, say)."""
    parent, leaf = names
    top = world / f"jm{depth}"
    home = top / "alice" / "home" / "alice"
    outside = world / "outside"
    for point in (top / "alice", top / "alice" / "home"):
        _tmpfs(point)
    student_dir = home.joinpath(*["d"] * depth) / parent
    _tmpfs(student_dir / leaf)
    _tmpfs(outside / leaf)
    (outside / leaf / "kernel").write_text("vmlinuz")
    real = mounts._umount2
    swapped: list[bool] = []

    def student_swaps(path: str, flags: int) -> int:
        if not swapped:  # the first umount2: the table has been read
            os.rename(student_dir, student_dir.with_name(parent + ".old"))
            os.symlink(outside, student_dir)
            swapped.append(True)
        return real(path, flags)

    monkeypatch.setattr(mounts, "_umount2", student_swaps)
    try:
        mounts.unmount_jails_in(top, RecordingReporter(), lazy=lazy, check=False)
    finally:
        monkeypatch.undo()
        with_outside = str(outside / leaf) in _points(world)
        if student_dir.is_symlink():
            student_dir.unlink()
        _unmount_below(world)
        for entry in world.iterdir():
            shutil.rmtree(entry)
    assert swapped
    assert with_outside, f"{outside / leaf} (outside the jails) was unmounted"



TRICKY = st.sampled_from(["\\134", "\\040", "a b", "x\ny", " (deleted)", "\\", "-", "\t"])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.lists(st.tuples(st.one_of(NAME, TRICKY), st.one_of(st.none(), NAME, TRICKY),
                               st.integers(1, 2)), min_size=1, max_size=4))
def test_generated_jail_mount_names_are_read_exactly_and_all_unmounted(
    world: Path, tree: list[tuple[str, str | None, int]],
) -> None:
    """Jail mounts named with any bytes (the kernel's octal escapes, a literal
    '\\134', a name ending ' (deleted)'), nested and stacked, beside a twin
    tree outside the mounts directory: the table is read exactly and the
    unmount takes every jail mount and nothing of the twin."""
    top, twin = world / "jm", world / "jm2"
    expected: list[str] = []
    for base in (top, twin):
        for name, child, layers in tree:
            for point in [base / name] + ([base / name / child] if child else []):
                for _ in range(layers):
                    _tmpfs(point)
                    if base == top:
                        expected.append(str(point))
    try:
        seen = [m.mountpoint for m in mountinfo.mounts_below(top)]
        assert sorted(map(os.fsencode, seen)) == sorted(map(os.fsencode, expected))
        twin_before = sorted(m.mountpoint for m in mountinfo.mounts_below(twin))
        result = mounts.unmount_jails_in(top, RecordingReporter(), check=False)
        assert not result.busy and not result.errors
        assert not mountinfo.mounts_below(top)
        assert sorted(m.mountpoint for m in mountinfo.mounts_below(twin)) == twin_before
    finally:
        _unmount_below(world)
        for entry in world.iterdir():
            shutil.rmtree(entry)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(faults=st.lists(st.sampled_from(["none", "appears", "vanishes"]), min_size=1,
                       max_size=6), lazy=st.booleans())
def test_mounts_appearing_or_vanishing_mid_unmount_end_with_the_jails_empty(
    world: Path, monkeypatch: pytest.MonkeyPatch, faults: list[str], lazy: bool,
) -> None:
    """Before each umount2, a generated fault: a new mount appears in a jail
    (a student's fusermount) or another one is unmounted by someone else.
    The run ends with nothing mounted below the mounts directory, no error,
    and the twin outside untouched."""
    top, twin = world / "jm", world / "jm2"
    for base in (top, twin):
        for login in ("alice", "bob"):
            for point in (base / login, base / login / "home", base / login / "tmp"):
                _tmpfs(point)
    real = mounts._umount2
    todo = list(faults)

    def fault(path: str, flags: int) -> int:
        what = todo.pop(0) if todo else "none"
        if what == "appears":
            _tmpfs(top / "alice" / "home" / f"new{len(todo)}")
        elif what == "vanishes":
            left = mountinfo.mounts_below(top)
            if left:
                _libc.umount2(os.fsencode(left[0].mountpoint), 2)
        return real(path, flags)

    monkeypatch.setattr(mounts, "_umount2", fault)
    try:
        twin_before = sorted(m.mountpoint for m in mountinfo.mounts_below(twin))
        result = mounts.unmount_jails_in(top, RecordingReporter(), lazy=lazy, check=False)
        assert not result.busy and not result.errors
        assert not mountinfo.mounts_below(top)
        assert sorted(m.mountpoint for m in mountinfo.mounts_below(twin)) == twin_before
    finally:
        monkeypatch.undo()
        _unmount_below(world)
        for entry in world.iterdir():
            shutil.rmtree(entry)

"""The gate of files read and programs run (ivle_maint/gates/trusted.py)
against an independent oracle, on real trees Hypothesis generates.

Each example builds, under a fresh directory, a path of directories (each
a real directory, or a symlink to one elsewhere), owned by root or by
nobody, with modes that others may or may not write, and at its end a
regular file, a FIFO, a device, a directory, a symlink or nothing.  The
oracle decides from the generated description alone (never from the file
system) whether the file may be read, or run, as root; the gate must
agree, return exactly the bytes written when it allows a read, and never
block or read past its bound.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.errors import ConfigError
from ivle_maint.gates import trusted
from ivle_maint.services import maintenance_page

NOBODY = 65534
LIMIT = 4096
READ = trusted.Purpose("test file", LIMIT)
READ_NO_LINK = trusted.Purpose("", LIMIT, final_symlink=False)
RUN = trusted.PROGRAM

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to nobody")

def examples(count: int) -> Any:
    """Hypothesis settings: COUNT examples, no deadline (real files, chown)."""
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


OWNERS = st.sampled_from([0, NOBODY])
DIR_MODES = st.sampled_from([0o755, 0o700, 0o775, 0o757, 0o777, 0o1777, 0o1755])
FILE_MODES = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o664, 0o646, 0o666, 0o777, 0o640])


@dataclass(frozen=True)
class Node:
    """One directory on the way: real, or a symlink (its owner) to one."""

    owner: int
    mode: int
    link_owner: int | None  # None: a real directory in place


@dataclass(frozen=True)
class End:
    kind: str  # file, fifo, device, dir, missing
    owner: int
    mode: int
    big: bool  # larger than LIMIT (sparse)
    link_owner: int | None  # a symlink in its place, to the file beside the root


nodes = st.builds(Node, OWNERS, DIR_MODES, st.one_of(st.none(), OWNERS))
ends = st.builds(End, st.sampled_from(["file", "file", "file", "fifo", "device", "dir",
                                       "missing"]),
                 OWNERS, FILE_MODES, st.booleans(), st.one_of(st.none(), OWNERS))


def build(base: Path, way: list[Node], end: End) -> tuple[Path, bytes]:
    """The tree under BASE (root's, 0755); the path to ask about and the
    bytes written there."""
    current = base
    for i, node in enumerate(way):
        name = f"d{i}"
        if node.link_owner is None:
            real = current / name
            real.mkdir()
        else:
            real = base / f"x{i}"  # the directory it leads to, beside the others
            real.mkdir()
            (current / name).symlink_to(real)
            os.lchown(current / name, node.link_owner, node.link_owner)
        current = current / name
        os.chown(real, node.owner, node.owner)
        os.chmod(real, node.mode)
    data = b"SELECT 1;\n"
    target = current / "f"
    real_file = base / "target" if end.link_owner is not None else target
    if end.kind == "file":
        real_file.write_bytes(data)
        if end.big:
            os.truncate(real_file, LIMIT + 1)
            data = data + b"\0" * (LIMIT + 1 - len(data))
    elif end.kind == "fifo":
        os.mkfifo(real_file)
    elif end.kind == "device":
        os.mknod(real_file, stat.S_IFCHR | 0o644, os.makedev(1, 5))
    elif end.kind == "dir":
        real_file.mkdir()
    if end.kind != "missing":
        os.chown(real_file, end.owner, end.owner)
        os.chmod(real_file, end.mode)
    if end.link_owner is not None:
        target.symlink_to(real_file)
        os.lchown(target, end.link_owner, end.link_owner)
    return target, data


def oracle(way: list[Node], end: End, *, program: bool, final_symlink: bool = True) -> str:
    """'ok', 'refused' or 'missing', from the description alone."""
    for node in way:
        if node.link_owner not in (None, 0):
            return "refused"  # a symlink someone else owns
        if node.owner != 0:
            return "refused"
        if node.mode & 0o022 and not node.mode & 0o1000:
            return "refused"
    if end.link_owner is not None and (end.link_owner != 0 or not final_symlink):
        return "refused"  # a symlink someone else owns, or one where none may be
    if end.kind == "missing":
        return "missing"
    if end.kind != "file":
        return "refused"
    if end.owner != 0 or end.mode & 0o022:
        return "refused"
    if program:
        # Its directory: the last one on the way, or the base for a symlink.
        holder = way[-1].mode if way and end.link_owner is None else 0o755
        if holder & 0o022 or not end.mode & 0o111:
            return "refused"
        return "ok"
    return "refused" if end.big else "ok"


def fresh(tmp_path: Path) -> Path:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    base.chmod(0o755)
    return base


def outcome_of_read(path: Path, purpose: trusted.Purpose, data: bytes) -> str:
    try:
        got = trusted.read(path, purpose)
    except FileNotFoundError:
        return "missing"
    except trusted.Refused:
        return "refused"
    assert got == data
    return "ok"


@examples(150)
@given(way=st.lists(nodes, max_size=3), end=ends, no_link=st.booleans())
def test_a_read_is_allowed_exactly_when_the_oracle_says(tmp_path: Path, way: list[Node],
                                                        end: End, no_link: bool) -> None:
    base = fresh(tmp_path)
    try:
        path, data = build(base, way, end)
        purpose = READ_NO_LINK if no_link else READ
        expected = oracle(way, end, program=False, final_symlink=not no_link)
        assert outcome_of_read(path, purpose, data) == expected
    finally:
        shutil.rmtree(base)


def said(read: Any) -> tuple[str, object]:
    """What READ() gave: its bytes, or its error's type and message."""
    try:
        return "bytes", read()
    except (OSError, trusted.Refused) as exc:
        return type(exc).__name__, str(exc)


@examples(100)
@given(way=st.lists(nodes, max_size=3), end=ends, no_link=st.booleans())
def test_reading_a_directorys_files_together_says_what_reading_each_says(
        tmp_path: Path, way: list[Node], end: End, no_link: bool) -> None:
    base = fresh(tmp_path)
    try:
        path, _data = build(base, way, end)
        purpose = READ_NO_LINK if no_link else READ
        beside = path.parent / "g"  # a plain file of root's, read with it
        if path.parent.is_dir():
            beside.write_bytes(b"SELECT 2;\n")
        for paths in ([path, beside], [beside, path]):
            expected = said(lambda paths=paths: [(p, trusted.read(p, purpose)) for p in paths])
            assert said(lambda paths=paths: list(trusted.read_each(paths, purpose))) == expected
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("mode, owner, link", [(0o644, 0, False), (0o664, 0, False),
                                               (0o646, 0, False), (0o644, NOBODY, False),
                                               (0o644, 0, True)])
def test_a_file_read_with_its_directorys_is_refused_as_read_refuses_it(
        tmp_path: Path, mode: int, owner: int, link: bool) -> None:
    base = fresh(tmp_path)
    (base / "a").write_bytes(b"SELECT 1;\n")
    odd = base / "b"
    (base / "real" if link else odd).write_bytes(b"SELECT 2;\n")
    if link:
        odd.symlink_to(base / "real")
        os.lchown(odd, NOBODY, NOBODY)
    os.chown(base / "real" if link else odd, owner, owner)
    os.chmod(base / "real" if link else odd, mode)
    paths = [base / "a", odd]
    expected = said(lambda: [(p, trusted.read(p, READ)) for p in paths])
    assert said(lambda: list(trusted.read_each(paths, READ))) == expected
    assert (expected[0] == "bytes") == (mode == 0o644 and owner == 0 and not link)


@examples(150)
@given(way=st.lists(nodes, max_size=3), end=ends)
def test_a_program_is_run_exactly_when_the_oracle_says(tmp_path: Path, way: list[Node],
                                                       end: End) -> None:
    base = fresh(tmp_path)
    try:
        path, _ = build(base, way, end)
        try:
            found = trusted.program(str(path))
            outcome = "missing" if found is None else "ok"
        except trusted.Refused:
            outcome = "refused"
        assert outcome == oracle(way, end, program=True)
        if outcome == "ok":
            assert found == str(path)  # run by the path checked, as given
    finally:
        shutil.rmtree(base)


entries = st.lists(st.tuples(st.sampled_from(["a", "b", "pkg/c", "pkg/d", "pkg/sub/e"]),
                             OWNERS, FILE_MODES), max_size=5, unique_by=lambda e: e[0])


@examples(100)
@given(files=entries, tree_owner=OWNERS, tree_mode=DIR_MODES,
       link=st.one_of(st.none(), st.tuples(OWNERS, OWNERS, FILE_MODES)))
def test_a_source_tree_is_trusted_exactly_when_every_entry_is_roots(
        tmp_path: Path, files: list[tuple[str, int, int]], tree_owner: int,
        tree_mode: int, link: tuple[int, int, int] | None) -> None:
    """setup.py runs as root and imports the tree: every entry counts, and
    so does whatever a symlink in it (LINK: its owner, and its target's
    owner and mode) leads to outside it."""
    base = fresh(tmp_path)
    try:
        tree = base / "tree"
        tree.mkdir()
        for name, owner, mode in files:
            path = tree / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
            os.chown(path, owner, owner)
            os.chmod(path, mode)
        if link is not None:
            outside = base / "outside.py"
            outside.write_text("")
            os.chown(outside, link[1], link[1])
            os.chmod(outside, link[2])
            (tree / "linked.py").symlink_to(outside)
            os.lchown(tree / "linked.py", link[0], link[0])
        os.chown(tree, tree_owner, tree_owner)
        os.chmod(tree, tree_mode)
        expected = tree_owner == 0 and not tree_mode & 0o022 and all(
            owner == 0 and not mode & 0o022 for _, owner, mode in files) and (
            link is None or (link[0] == 0 and link[1] == 0 and not link[2] & 0o022))
        try:
            trusted.check_tree(tree)
            allowed = True
        except trusted.Refused:
            allowed = False
        assert allowed == expected
    finally:
        shutil.rmtree(base)


PATH_DIRS = st.lists(st.tuples(OWNERS, DIR_MODES, st.sampled_from(["none", "root", "nobody",
                                                                   "not executable"])),
                     min_size=1, max_size=4)


@examples(100)
@given(dirs=PATH_DIRS)
def test_a_path_lookup_checks_the_first_program_found_never_skips_it(
        tmp_path: Path, dirs: list[tuple[int, int, str]]) -> None:
    base = fresh(tmp_path)
    try:
        search = []
        for i, (owner, mode, program) in enumerate(dirs):
            directory = base / f"bin{i}"
            directory.mkdir()
            if program != "none":
                path = directory / "tool"
                path.write_text("#!/bin/sh\n")
                path.chmod(0o644 if program == "not executable" else 0o755)
                if program == "nobody":
                    os.chown(path, NOBODY, NOBODY)
            os.chown(directory, owner, owner)
            os.chmod(directory, mode)
            search.append(str(directory))
        expected: str | None = None
        for i, (owner, mode, program) in enumerate(dirs):
            if program in ("none", "not executable"):
                continue  # the shell skips these too
            safe = owner == 0 and not mode & 0o022 and program == "root"
            expected = search[i] + "/tool" if safe else "refused"
            break
        try:
            found: str | None = trusted.program("tool", os.pathsep.join(search))
        except trusted.Refused:
            found = "refused"
        assert found == expected
    finally:
        shutil.rmtree(base)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opened for reading, a FIFO with no writer blocks for ever: refused
    from lstat (a test that blocked would never end; pytest's own timeout
    is not needed)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(trusted.Refused, match="a FIFO, not a regular file"):
        trusted.read(fifo, READ)


def test_a_file_that_grows_past_its_bound_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    fd = trusted.open_checked(path, READ)
    try:
        path.write_bytes(b"x" * (LIMIT + 10))  # same inode, now too long
        with pytest.raises(trusted.Refused, match=f"larger than {LIMIT} bytes"):
            trusted.read_fd(fd, READ, path)
    finally:
        os.close(fd)


def test_a_scripts_interpreter_is_checked_too(tmp_path: Path) -> None:
    base = fresh(tmp_path)
    interpreter = base / "sh"
    shutil.copy("/bin/sh", interpreter)
    os.chown(interpreter, NOBODY, NOBODY)
    script = base / "script"
    script.write_text(f"#!{interpreter}\n")
    script.chmod(0o755)
    with pytest.raises(trusted.Refused, match=f"program {interpreter}: owned by uid {NOBODY}"):
        trusted.program(str(script))


@pytest.mark.parametrize("fault", ["owned by nobody", "mode 0666", "a FIFO", "sparse 2 GB"])
def test_a_maintenance_page_others_can_change_is_never_served(tmp_path: Path,
                                                              fault: str) -> None:
    """The page every client sees during the upgrade: a student who could
    change it would put their own page (a login form) before everyone."""
    page = tmp_path / "page.html"
    page.write_text("<p>Ours</p>")
    conf = tmp_path / "ivle-maint.conf"
    conf.write_text(f"[web]\nmaintenance_page = {page}\n")
    settings = load_settings(str(conf))
    assert maintenance_page.page_text(settings, 60) == "<p>Ours</p>"
    if fault == "owned by nobody":
        os.chown(page, NOBODY, NOBODY)
        why = f"owned by uid {NOBODY}, not root"
    elif fault == "mode 0666":
        page.chmod(0o666)
        why = "writable by others \\(mode 0666\\)"
    elif fault == "a FIFO":
        page.unlink()
        os.mkfifo(page)
        why = "a FIFO, not a regular file"
    else:
        os.truncate(page, 2 << 30)
        why = f"larger than {64 * 1024} bytes"
    with pytest.raises(ConfigError, match=f"\\[web\\] maintenance_page {page}: {why}"):
        maintenance_page.page_text(settings, 60)


ENV_FORMS = st.sampled_from(["{t}", "-S {t}", "-S {t} -u", "-S -v {t}", "--split-string={t} x",
                             "-S PATH={path} {t}", "-S -i {t}", "-S -u PATH {t}"])


@examples(40)
@given(form=ENV_FORMS, order=st.permutations(["safe", "student", "empty"]),
       also_absolute=st.booleans())
def test_the_program_env_finds_is_checked_as_env_would_find_it(
    tmp_path: Path, form: str, order: list[str], also_absolute: bool
) -> None:
    """`#!/usr/bin/env tool`: env runs the first `tool` on the PATH the
    script inherits (or the one its first line sets); that one is checked."""
    base = Path(tempfile.mkdtemp(prefix="e", dir="/tmp"))  # short: the kernel reads 256 bytes
    base.chmod(0o755)
    dirs = {name: base / name for name in order}
    for name, directory in dirs.items():
        directory.mkdir()
        directory.chmod(0o755)
        if name == "empty":
            continue
        tool = directory / "tool"
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
        if name == "student":  # a student's own directory and program
            os.chown(tool, NOBODY, NOBODY)
            os.chown(directory, NOBODY, NOBODY)
    path = ":".join(str(dirs[name]) for name in order)
    target = str(dirs["safe"] / "tool") if also_absolute else "tool"
    script = base / "script"
    script.write_text(f"#!/usr/bin/env {form.format(t=target, path=path)}\n")
    script.chmod(0o755)
    # The oracle: which directory env searches, from the description alone.
    if len(script.read_bytes()) > 256:
        expected = "refused"  # the kernel cuts the line: nothing to follow
    elif also_absolute:
        expected = "ok"
    elif "-i" in form or "PATH {t}" in form:
        expected = "refused"  # /bin:/usr/bin have no `tool`
    else:
        first = next(name for name in order if name != "empty")
        expected = "ok" if first == "safe" else "refused"
    old = os.environ.get("PATH")
    os.environ["PATH"] = path if "PATH=" not in form else "/bin:/usr/bin"
    try:
        trusted.program(str(script))
        got = "ok"
    except trusted.Refused as exc:
        got = "refused"
        assert f"program {script}: its first line" in str(exc), exc
    finally:
        if old is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = old
        shutil.rmtree(base)
    assert got == expected, form


@pytest.mark.parametrize("line", ["-S 'tool'", "-S ${HOME}/tool", "-C /tmp tool", "-S", "",
                                  "-S PATH=.:/bin tool", "-S PATH=:/bin tool"])
def test_an_env_first_line_ivle_maint_cannot_follow_is_refused(tmp_path: Path,
                                                                line: str) -> None:
    base = fresh(tmp_path)
    script = base / "script"
    script.write_text(f"#!/usr/bin/env {line}\n")
    script.chmod(0o755)
    with pytest.raises(trusted.Refused, match="its first line runs env"):
        trusted.program(str(script))

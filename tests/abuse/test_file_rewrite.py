"""Files rewritten (gates/rewrite.py): everything a file had survives its
rewrite, and a file that cannot be replaced whole is refused, early.

An administrator's ivle.conf may be root:www-data 0640 with an ACL for a
monitoring user and an extended attribute of a backup tool: the upgrade's
media-version rewrite keeps all of it, and the comments.  A hard-linked
ivle.conf would be split by a rename (the other name keeps the old
version): the preflight refuses it in one line while the site is still up.
The Hypothesis case replaces real files with generated modes, owners,
extended attributes and ACLs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.gates.rewrite import ACL_XATTR, replace_file
from support.abuse_helpers import error_lines
from support.upgrade_helpers import final_state, ivle_conf_without_media, postinst, preinst, unpack

pytestmark = [pytest.mark.needs_root]

needs_setfacl = pytest.mark.skipif(shutil.which("setfacl") is None,
                                   reason="setfacl missing (scripts/install-deps installs acl)")


def attrs(path: Path) -> dict[str, bytes]:
    """Every extended attribute of PATH, the ACL (system.posix_acl_access) included."""
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False)}


def facts(path: Path) -> tuple[int, int, int, dict[str, bytes]]:
    st_ = os.lstat(path)
    return st_.st_uid, st_.st_gid, st_.st_mode, attrs(path)


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "-n", "-p", str(path)], capture_output=True, text=True,
                          check=True).stdout


@needs_setfacl
@pytest.mark.needs_postgres
def test_an_upgrade_keeps_ivle_confs_owner_mode_acl_attributes_and_comments(site: Any) -> None:
    conf = site.ivle_conf
    # root's (the trusted-file gate refuses an ivle.conf anyone else could
    # change), Apache's group, an ACL for a monitoring user.
    os.chown(conf, 0, 33)
    conf.chmod(0o640)
    subprocess.run(["setfacl", "-m", "u:nobody:r,g:www-data:r", str(conf)], check=True)
    os.setxattr(conf, "user.backup-tool", b"keep me")
    os.setxattr(conf, "trusted.ivle-test", b"\x00\x01")
    before, acl, text = facts(conf), getfacl(conf), ivle_conf_without_media(site)
    assert ACL_XATTR in before[3]

    assert preinst(site).returncode == 0
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert final_state(site)["media"] not in (None, "1.0")  # it was rewritten
    assert facts(conf) == before and getfacl(conf) == acl
    assert ivle_conf_without_media(site) == text  # comments and every other line kept
    assert sorted(p.name for p in conf.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.needs_postgres
@pytest.mark.parametrize("how", ["hard link", "symlink"])
def test_an_ivle_conf_that_cannot_be_replaced_whole_is_refused_before_anything_stops(
        site: Any, how: str) -> None:
    """A hard link would be split by the rename, a symlink replaced by a
    file: the preflight says so in one line, with the site still up."""
    conf = site.ivle_conf
    content = conf.read_bytes()
    if how == "hard link":
        other = conf.with_name("ivle.conf.shared")
        os.link(conf, other)
        why = ("has 2 hard links; refused (replacing it would split them: make it a single "
               "file, e.g. cp -a it and mv the copy over)")
    else:
        other = conf.with_name("ivle.conf.real")
        conf.rename(other)
        conf.symlink_to(other.name)
        why = ("is a symlink; refused (ivle-maint replaces this file and never writes "
               "through a link: make it a regular file)")

    done = preinst(site)
    assert done.returncode != 0
    assert error_lines(done) == [f"ivle-maint: error: {conf}: {why}"]
    assert all(site.service_running(s) for s in site.services)  # nothing stopped
    assert os.path.samefile(conf, other) and conf.read_bytes() == content


def test_a_hard_linked_file_is_refused_and_both_names_keep_their_content(
        tmp_path: Path) -> None:
    target, other = tmp_path / "ivle.conf", tmp_path / "elsewhere"
    target.write_bytes(b"old\n")
    os.link(target, other)
    with pytest.raises(MaintError, match=r"ivle.conf: has 2 hard links; refused"):
        replace_file(target, b"new\n")
    assert os.path.samefile(target, other) and other.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "ivle.conf"]


def test_a_planted_temporary_name_is_never_followed(tmp_path: Path, monkeypatch: Any) -> None:
    """The temporary file is created O_EXCL|O_NOFOLLOW: a symlink already at
    its name (a guessed name) is neither written through nor reused."""
    from ivle_maint.gates import rewrite

    victim = tmp_path / "victim"
    victim.write_bytes(b"root's\n")
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(rewrite.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".f.aaaaaaaaaaaa.tmp").symlink_to(victim)
    replace_file(tmp_path / "f", b"mine\n")
    assert victim.read_bytes() == b"root's\n"
    assert (tmp_path / "f").read_bytes() == b"mine\n"
    assert (tmp_path / ".f.aaaaaaaaaaaa.tmp").is_symlink()


USERS = st.sampled_from([0, 33, 65534, 1234])
GROUPS = st.sampled_from([0, 4, 33, 65534])
ATTR_NAMES = st.from_regex(r"\A(user|trusted)\.[a-z][a-z0-9._-]{0,20}\Z")
ATTRS = st.dictionaries(ATTR_NAMES, st.binary(max_size=64), max_size=4)
ACL_ENTRIES = st.lists(st.tuples(st.sampled_from("ug"), st.sampled_from([33, 65534, 1234]),
                                 st.sampled_from(["r", "rw", "rwx", "-", "x"])),
                       max_size=3, unique_by=lambda e: e[:2])


@needs_setfacl
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.integers(0, 0o7777), uid=USERS, gid=GROUPS, xattrs=ATTRS, acl=ACL_ENTRIES,
       data=st.binary(max_size=256))
def test_a_rewritten_file_keeps_owner_mode_acl_and_every_attribute(
        *, mode: int, uid: int, gid: int, xattrs: dict[str, bytes],
        acl: list[tuple[str, int, str]], data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "ivle.conf"
        target.write_bytes(b"old\n")
        os.chown(target, uid, gid)
        os.chmod(target, mode)
        if acl:
            spec = ",".join(f"{kind}:{who}:{perms}" for kind, who, perms in acl)
            subprocess.run(["setfacl", "-m", spec, str(target)], check=True)
        for name, value in xattrs.items():
            os.setxattr(target, name, value)
        before = facts(target)
        replace_file(target, data)
        assert target.read_bytes() == data
        assert facts(target) == before
        assert os.listdir(directory) == ["ivle.conf"]


@needs_setfacl
def test_a_directorys_default_acl_is_not_added_to_a_file_that_had_none(tmp_path: Path) -> None:
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rw", str(tmp_path)], check=True)
    target = tmp_path / "ivle.conf"
    target.write_bytes(b"old\n")
    os.removexattr(target, ACL_XATTR)  # the administrator took the inherited ACL away
    before = facts(target)
    replace_file(target, b"new\n")
    assert facts(target) == before and ACL_XATTR not in attrs(target)


def test_ivle_conf_replaced_by_another_writer_during_the_rewrite_loses_nothing(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Another program (an administrator's editor, configuration management)
    renames its own ivle.conf into place after ivle-maint read it: the
    rewrite is refused, that writer's file stays, and nothing is written."""
    from ivle_maint.gates import rewrite
    from ivle_maint.media import version

    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "ivle.conf"
    conf.write_text("[media]\nversion = 1.0\n")
    theirs = b"[media]\nversion = 1.0\n# theirs: a new database password\n"
    real = rewrite.replace_file

    def another_writer_first(path: Path, data: bytes, **kwargs: Any) -> Any:
        other = etc / ".their-editor.tmp"
        other.write_bytes(theirs)
        os.replace(other, conf)
        return real(path, data, **kwargs)

    monkeypatch.setattr(version, "replace_file", another_writer_first)
    with pytest.raises(MaintError, match="changed while being rewritten"):
        version.set_media_version(conf, tmp_path / "state", tmp_path / "backup", "1.1",
                                upgrade="u1", force=True)
    assert conf.read_bytes() == theirs
    assert not list(tmp_path.glob("backup/ivle.conf.*"))
    assert [p.name for p in etc.iterdir()] == ["ivle.conf"]


# Another program writing ivle.conf while ivle-maint rewrites it: an
# editor's save (its own file renamed into place), or a write to the file
# itself (`>>`, a truncate-and-write), at each point between ivle-maint's
# read of the old content and its rename.
def _renamed_over(conf: Path, theirs: bytes) -> None:
    other = conf.parent / ".their-editor.tmp"
    other.write_bytes(theirs)
    os.replace(other, conf)


def _written_in_place(conf: Path, theirs: bytes) -> None:
    with open(conf, "r+b") as f:
        f.write(theirs)
        f.truncate()


WRITERS = {"renamed over": _renamed_over, "written in place": _written_in_place}
POINTS = ("_snapshot", "_store_backup", "_write_temp")


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(point=st.sampled_from(POINTS), writer=st.sampled_from(sorted(WRITERS)),
       extra=st.binary(min_size=0, max_size=40), with_backup=st.booleans())
def test_another_writer_between_the_read_and_the_rename_loses_nothing(
        tmp_path: Path, monkeypatch: Any, *, point: str, writer: str, extra: bytes,
        with_backup: bool) -> None:
    """Whenever the other program writes after ivle-maint read the file, its
    content is what the file holds afterwards, the rewrite is refused in
    one line, and no temporary file is left beside it."""
    from ivle_maint.gates import rewrite

    assume(with_backup or point != "_store_backup")  # no backup: no such point
    etc = Path(tempfile.mkdtemp(dir=tmp_path))
    conf = etc / "ivle.conf"
    ours_before = b"[media]\nversion = 1.0\n"
    conf.write_bytes(ours_before)
    theirs = b"[media]\nversion = 1.0\n# theirs\n" + extra.replace(b"\0", b"")
    real = getattr(rewrite, point)

    def then_the_other_writer(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not then_the_other_writer.done:  # type: ignore[attr-defined]
            then_the_other_writer.done = True  # type: ignore[attr-defined]
            WRITERS[writer](conf, theirs)
        return result

    then_the_other_writer.done = False  # type: ignore[attr-defined]
    monkeypatch.setattr(rewrite, point, then_the_other_writer)
    backup = etc.parent / f"backup-{etc.name}" if with_backup else None
    try:
        with pytest.raises(MaintError, match="changed while being rewritten") as raised:
            rewrite.replace_file(conf, b"[media]\nversion = 1.1\n", expect=ours_before,
                                 backup_dir=backup)
    finally:
        monkeypatch.undo()
    assert "\n" not in str(raised.value)
    assert conf.read_bytes() == theirs
    assert [p.name for p in etc.iterdir()] == ["ivle.conf"]


@pytest.mark.parametrize("flag", ["i", "a"])
def test_an_immutable_file_is_refused_by_the_check_the_preflight_makes(
    tmp_path: Path, flag: str
) -> None:
    """chattr +i (or +a) ivle.conf: permission bits say writable, the
    directory takes new files, yet no rename can replace it.  The check the
    preflight makes (check_rewritable) says so, with the site still up."""
    from ivle_maint.gates.rewrite import check_rewritable

    target = tmp_path / "ivle.conf"
    target.write_text("[media]\nversion = 1\n")
    if subprocess.run(["chattr", f"+{flag}", str(target)], check=False).returncode != 0:
        pytest.skip("this filesystem has no inode flags")
    try:
        with pytest.raises(MaintError, match=f"chattr -{flag} it first"):
            check_rewritable(target)
        with pytest.raises(MaintError):
            replace_file(target, b"new")
        assert target.read_text() == "[media]\nversion = 1\n"
        assert [p.name for p in tmp_path.iterdir()] == ["ivle.conf"]
    finally:
        subprocess.run(["chattr", f"-{flag}", str(target)], check=True)


def test_a_log_larger_than_memory_should_hold_is_compressed_in_bounded_memory(
        tmp_path: Path) -> None:
    """A 40 MiB log (a run with thousands of users): rotation compresses it
    through the rewrite gate a chunk at a time, keeping its owner, mode and
    mtime; it never reads the whole log (once over the state-file bound, the
    run failed before it began)."""
    import gzip
    import random
    import tracemalloc

    from ivle_maint import logfile

    logs = tmp_path / "log"
    logs.mkdir()
    rng = random.Random(22)
    big = logs / "upgrade-1.0_to_1.1-20270101T000000Z.n000001.log"
    with big.open("wb") as out:
        for _ in range(40):
            out.write(rng.randbytes(1 << 20))
    os.chown(big, 0, 4)
    os.chmod(big, 0o640)
    os.utime(big, (1_800_000_000, 1_800_000_000))
    (logs / "upgrade-1.0_to_1.1-20270101T000001Z.n000002.log").write_text("newest\n")
    tracemalloc.start()
    try:
        logfile.prune(logs, 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak >> 20} MiB held at once"
    packed = big.with_name(big.name + ".gz")
    assert not big.exists()
    st = packed.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_mtime) == \
        (0, 4, 0o640, 1_800_000_000)
    with gzip.open(packed) as unpacked:
        rng = random.Random(22)
        for _ in range(40):
            assert unpacked.read(1 << 20) == rng.randbytes(1 << 20)
        assert unpacked.read() == b""

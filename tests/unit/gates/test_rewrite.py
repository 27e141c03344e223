"""gates.rewrite: content, owner/mode, backups, and what a crash leaves behind.

What a hostile or unusual file (links, ACLs, attributes) gets is in
tests/abuse/test_file_rewrite.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ivle_maint.errors import MaintError
from ivle_maint.gates import rewrite as atomic
from ivle_maint.gates.rewrite import backup_copy, replace_file

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_new_file_gets_content_default_mode_and_parents(tmp_path):
    target = tmp_path / "a" / "b" / "file"
    assert replace_file(target, b"hello\n") is None
    assert target.read_bytes() == b"hello\n"
    assert target.stat().st_mode & 0o7777 == 0o644
    assert names(target.parent) == ["file"]


def test_existing_file_keeps_its_mode_unless_told(tmp_path):
    target = tmp_path / "conf"
    target.write_bytes(b"old")
    target.chmod(0o640)
    replace_file(target, b"new")
    assert (target.read_bytes(), target.stat().st_mode & 0o7777) == (b"new", 0o640)
    replace_file(target, b"newer", mode=0o600)
    assert target.stat().st_mode & 0o7777 == 0o600


def test_replaces_the_inode_not_the_content_in_place(tmp_path):
    # A reader holding the old file open keeps reading the old content.
    target = tmp_path / "conf"
    target.write_bytes(b"old content")
    with open(target, "rb") as reader:
        replace_file(target, b"new content")
        assert reader.read() == b"old content"
    assert target.read_bytes() == b"new content"


@needs_root
def test_keeps_owner_and_group(tmp_path):
    target = tmp_path / "ivle.conf"
    target.write_bytes(b"[media]\n")
    os.chown(target, 1234, 33)
    target.chmod(0o640)
    replace_file(target, b"[media]\nversion = 2\n")
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 33, 0o640)


def test_a_symlink_is_refused_and_neither_it_nor_its_target_changes(tmp_path):
    real = tmp_path / "real.conf"
    real.write_bytes(b"old")
    link = tmp_path / "ivle.conf"
    link.symlink_to(real)
    with pytest.raises(MaintError, match=r"ivle.conf: is a symlink; refused"):
        replace_file(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"old"
    assert names(tmp_path) == ["ivle.conf", "real.conf"]


def test_backup_holds_the_previous_content_and_owner_and_is_private(tmp_path):
    target = tmp_path / "etc" / "ivle.conf"
    target.parent.mkdir()
    target.write_bytes(b"previous\n")
    target.chmod(0o640)
    backups = tmp_path / "backups"
    made = replace_file(target, b"next\n", backup_dir=backups)
    assert made is not None and made.parent == backups
    assert made.name.startswith("ivle.conf.")
    assert made.read_bytes() == b"previous\n"
    assert made.stat().st_mode & 0o7777 == 0o600  # ivle.conf's 0640 or not: a password
    assert backups.stat().st_mode & 0o777 == 0o700  # ivle.conf holds a password
    assert target.read_bytes() == b"next\n"


def test_backups_in_the_same_second_do_not_overwrite_each_other(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"1")
    first = backup_copy(target, tmp_path / "b")
    target.write_bytes(b"2")
    second = backup_copy(target, tmp_path / "b")
    assert first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"1", b"2")


def test_no_backup_of_a_file_that_did_not_exist(tmp_path):
    assert replace_file(tmp_path / "new", b"x", backup_dir=tmp_path / "b") is None
    assert not (tmp_path / "b").exists()


def test_failed_rename_leaves_the_original_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "ivle.conf"
    target.write_bytes(b"original\n")

    def crash(src, dst):
        raise OSError(5, "Input/output error", str(dst))

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(MaintError, match=r"cannot write .*ivle.conf.*Input/output error"):
        replace_file(target, b"replacement\n")
    assert target.read_bytes() == b"original\n"
    assert names(tmp_path) == ["ivle.conf"]


def test_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"original")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(MaintError, match="No space left"):
        replace_file(target, b"new")
    assert target.read_bytes() == b"original"
    assert names(tmp_path) == ["f"]


def test_interrupt_during_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"original")

    def interrupted(fd, mode):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fchmod", interrupted)
    with pytest.raises(KeyboardInterrupt):
        replace_file(target, b"new")
    assert names(tmp_path) == ["f"]
    assert target.read_bytes() == b"original"


def test_owner_that_cannot_be_kept_is_an_error_not_a_silent_change(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"original")
    mine = os.stat(target)
    real_stat = os.lstat

    def owned_by_someone_else(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if Path(path) == target:
            fields = list(st)
            fields[5] = mine.st_gid + 1  # st_gid
            return os.stat_result(fields)
        return st

    def refused(fd, uid, gid):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "lstat", owned_by_someone_else)
    monkeypatch.setattr(atomic.os, "fchown", refused)
    with pytest.raises(MaintError, match="Operation not permitted"):
        replace_file(target, b"new")
    assert target.read_bytes() == b"original"
    assert names(tmp_path) == ["f"]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    with pytest.raises(MaintError, match="not a regular file; refused"):
        replace_file(fifo, b"{}\n", mode=0o600)


def test_parents_get_0755_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        replace_file(tmp_path / "a" / "b" / "f", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o755


# What writes or replaces a file's content, and where else it is allowed.
WRITERS = ("write_text(", "write_bytes(", "os.replace(", "os.rename(", ".rename(", "mkstemp(",
           "shutil.copy", "shutil.move", "O_TRUNC", "open(\"w", "\"wb\")", "\"w\")")
ALLOWED = {
    "gates/rewrite.py": "the gate",
    "db/backup.py": ".partial -> final: a new dump put in place under a new name",
    "preflight.py": "mkstemp: a file made and removed to prove a directory writable",
    "rollback/keep.py": "the jail template's hard-link copy (a directory) renamed into place",
    "rollback/restore.py": "the kept jail template (a directory) renamed back",
    "rollback/old_package.py": "a kept .deb (a hard link, or dpkg-repack's) put in place "
                               "under its name once checked, as a dump is",
    "warm_worker.py": "its listening socket (no file's content) renamed into place",
}


def test_no_file_is_written_around_the_rewrite_gate():
    package = Path(__file__).resolve().parents[3] / "ivle_maint"
    found = []
    for source in sorted(package.rglob("*.py")):
        where = source.relative_to(package).as_posix()
        if where in ALLOWED:
            continue
        text = source.read_text()
        found += [f"{where}: {w}" for w in WRITERS if w in text]
    assert found == []


def test_an_attribute_that_cannot_be_kept_is_an_error_naming_it(tmp_path, monkeypatch):
    target = tmp_path / "ivle.conf"
    target.write_bytes(b"original")
    os.setxattr(target, "user.tool", b"x")

    def unsupported(fd, name, value):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(atomic.os, "setxattr", unsupported)
    with pytest.raises(MaintError, match=r"ivle.conf: its extended attribute user.tool cannot "
                                         r"be kept \(Operation not supported\); nothing written"):
        replace_file(target, b"new")
    assert target.read_bytes() == b"original"
    assert names(tmp_path) == ["ivle.conf"]


@pytest.fixture()
def flushes(monkeypatch):
    """The fsync(2) calls made (and made for real)."""
    made: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        made.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fsync", counted)
    return made


@pytest.mark.parametrize("durable", [True, False])
def test_durable_flushes_file_and_directory_otherwise_neither(tmp_path, flushes, durable):
    target = tmp_path / "record"
    target.write_bytes(b"old")
    replace_file(target, b"new", durable=durable)
    assert target.read_bytes() == b"new" and names(tmp_path) == ["record"]
    assert len(flushes) == (2 if durable else 0)


def test_a_journal_flushes_what_a_step_did_not_that_it_began(tmp_path, flushes):
    from ivle_maint.journal import Journal

    journal = Journal.open(tmp_path, "1.0", "1.1", "both")
    journal.begin("migrate")
    assert flushes == []  # inside the outage; a power cut makes it moot
    assert Journal.load(journal.path).is_running("migrate")
    journal.finish("migrate", "applied 1 migration", {})
    assert len(flushes) == 2
    assert Journal.load(journal.path).is_done("migrate")


def test_where_files_cannot_be_exchanged_an_expected_rewrite_renames_as_before(
        tmp_path, monkeypatch):
    """A filesystem without RENAME_EXCHANGE (EINVAL): the rewrite is still
    made, by rename, after the expectation was checked."""
    target = tmp_path / "ivle.conf"
    target.write_bytes(b"old\n")
    exchanged = []
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: exchanged.append(b) or False)
    replace_file(target, b"new\n", expect=b"old\n")
    assert target.read_bytes() == b"new\n" and exchanged == [target]
    assert names(tmp_path) == ["ivle.conf"]


def test_an_expected_rewrite_exchanges_the_files_and_leaves_no_temporary(tmp_path):
    """Where the kernel exchanges them (tmpfs, ext4, ...), the old file goes
    by the temporary name and is removed; its inode is not the new one."""
    target = tmp_path / "ivle.conf"
    target.write_bytes(b"old\n")
    before = os.stat(target).st_ino
    replace_file(target, b"new\n", expect=b"old\n")
    assert target.read_bytes() == b"new\n" and os.stat(target).st_ino != before
    assert names(tmp_path) == ["ivle.conf"]


REWRITE = """
from pathlib import Path
from ivle_maint.gates.rewrite import replace_file
"""


def test_a_rewrite_killed_at_any_point_leaves_one_whole_file_and_no_temporary_after_the_next(
        tmp_path):
    """Killed at each step of a rewrite that backs the old file up (ivle.conf's
    media version), then another rewrite in the same directories: the file
    is the old content or the new, whole; each backup is the old content,
    whole; and no temporary file is left in either directory (a killed
    one holds the database password, or is as big as a log: the next
    rewrite there removes it)."""
    import shutil

    from support.kill_points import killed_at

    old, new, later = b"[media]\nversion = 1\n" * 50, b"[media]\nversion = 2\n" * 50, b"3\n"
    point = 0
    while True:
        point += 1
        etc, backups = tmp_path / f"{point}" / "etc", tmp_path / f"{point}" / "backup"
        etc.mkdir(parents=True)
        conf = etc / "ivle.conf"
        conf.write_bytes(old)
        conf.chmod(0o640)
        killed = killed_at(point, REWRITE, "replace_file(Path(sys.argv[2]), sys.argv[3].encode(), "
                           "backup_dir=Path(sys.argv[4]))", str(conf), new.decode(), str(backups))
        assert conf.read_bytes() in (old, new), point
        replace_file(etc / "other", later)  # the next rewrite in each directory
        if backups.exists():
            replace_file(backups / "other", later)
        for directory in (etc, backups):
            for path in directory.iterdir() if directory.exists() else ():
                assert path.name == "other" or path.read_bytes() in (old, new), (point, path)
                assert not path.name.endswith(".tmp"), (point, path.name)
        shutil.rmtree(tmp_path / f"{point}")
        if not killed:
            break
    assert point > 10  # the kills did fall inside the rewrite


HELD_REWRITE = """
import sys
from pathlib import Path
from ivle_maint.gates.rewrite import replace_file

def chunks():
    yield b"first half, "
    print("writing", flush=True)
    sys.stdin.readline()  # the other rewrite runs here
    yield b"second half"

replace_file(Path(sys.argv[1]), chunks())
print("done", flush=True)
"""


def test_a_rewrite_under_way_keeps_its_temporary_while_another_rewrites_beside_it(tmp_path):
    """The next rewrite removes killed rewrites' temporary files, never the
    one a live rewrite is still writing."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HELD_REWRITE, str(tmp_path / "a")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline() == "writing\n"
    replace_file(tmp_path / "b", b"beside it")
    proc.stdin.write("go on\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "done\n"
    assert proc.wait() == 0
    assert (tmp_path / "a").read_bytes() == b"first half, second half"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


NOBODY = 65534


def _readable_by(path: Path, uid: int, gid: int) -> bool:
    """Can a real process of UID (group GID, no other) read PATH?"""
    import subprocess

    done = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(path)],
        capture_output=True, check=False)
    return done.returncode == 0


def test_a_backup_of_ivle_conf_is_readable_by_no_one_but_root_whatever_it_and_its_directory_allow(
        tmp_path):
    """ivle.conf holds the database password, and a backup outlives the file
    it copies: a password changed since, a mode or ACL tightened since.
    Whatever ivle.conf's mode, group and ACL, whatever the backup
    directory's mode (made by someone else) or default ACL, and the umask:
    no other user, not even ivle.conf's group, can read the backup."""
    import shutil
    import subprocess
    import tempfile

    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = tempfile.mkdtemp(prefix="ivle-maint-backup-test-", dir="/var/tmp")
    os.chmod(base, 0o755)  # nobody may walk in: only the modes under test stop it

    @settings(max_examples=30, deadline=None)
    @given(found=st.fixed_dictionaries({
        "conf_mode": st.integers(0, 0o777).map(lambda m: m & ~0o022),  # else refused
        "group": st.sampled_from([0, NOBODY]),
        "acl": st.sampled_from(["", f"user:{NOBODY}:r", f"group:{NOBODY}:r"]),
        "dir_mode": st.sampled_from([None, 0o700, 0o711, 0o750, 0o755]),
        "default_acl": st.booleans(), "umask": st.integers(0, 0o777)}))
    def case(found):
        conf_mode, group, acl, dir_mode, default_acl, umask = (found[k] for k in (
            "conf_mode", "group", "acl", "dir_mode", "default_acl", "umask"))  # by name: a
        # dict's order is not Hypothesis' promise (its newest draws them otherwise)
        top = Path(tempfile.mkdtemp(dir=base))
        try:
            top.chmod(0o755)
            conf, backups = top / "ivle.conf", top / "backups"
            conf.write_bytes(b"[database]\npassword = secret\n")
            os.chown(conf, 0, group)
            conf.chmod(conf_mode)
            if acl:
                subprocess.run(["setfacl", "-m", acl, str(conf)], check=True)
            if dir_mode is not None:
                backups.mkdir()
                backups.chmod(dir_mode)
                if default_acl:
                    subprocess.run(["setfacl", "-d", "-m", f"user:{NOBODY}:r", str(backups)],
                                   check=True)
            old = os.umask(umask)
            try:
                made = replace_file(conf, b"[database]\npassword = new\n", backup_dir=backups)
            finally:
                os.umask(old)
            assert made is not None and made.read_bytes() == b"[database]\npassword = secret\n"
            assert not _readable_by(made, NOBODY, NOBODY), oct(made.stat().st_mode)
            assert made.stat().st_mode & 0o077 == 0
        finally:
            shutil.rmtree(top)

    try:
        case()
    finally:
        shutil.rmtree(base)


def test_a_temporary_the_sweep_cannot_remove_never_fails_the_rewrite(tmp_path):
    """The sweep of killed rewrites' temporaries is best effort: one it may
    not remove (immutable) stays, and the rewrite beside it is done."""
    import subprocess

    stuck = tmp_path / ".ivle.conf.0123456789ab.tmp"
    stuck.write_bytes(b"[database]\npassword = old\n")
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        replace_file(tmp_path / "record", b"new")
        assert (tmp_path / "record").read_bytes() == b"new" and stuck.exists()
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)


def test_a_patch_in_place_reaches_no_other_name_and_no_other_users_file(tmp_path):
    """patch_in_place (a full disk: the journal told the new code is in
    place) writes into the file itself: a journal that is a second name of
    another file (an archive a killed run linked, a backup tool's link), a
    symlink, a FIFO or another user's file is left as it is (False), and
    what it names keeps its content."""
    import shutil

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ivle_maint.gates.rewrite import patch_in_place

    @settings(max_examples=30, deadline=None)
    @given(kind=st.sampled_from(["file", "hard link", "symlink", "fifo", "another user's"]))
    def case(kind):
        top = tmp_path / "t"
        top.mkdir()
        try:
            other, journal = top / "other", top / "journal.json"
            other.write_bytes(b'{"code_new": false}\n')
            if kind == "hard link":
                os.link(other, journal)
            elif kind == "symlink":
                journal.symlink_to(other)
            elif kind == "fifo":
                os.mkfifo(journal)
            else:
                journal.write_bytes(other.read_bytes())
                if kind == "another user's":
                    os.chown(journal, 65534, 65534)
            done = patch_in_place(journal, b"false", b"true ")
            assert done == (kind == "file")
            assert other.read_bytes() == b'{"code_new": false}\n'
        finally:
            shutil.rmtree(top)

    case()

"""Gate 3, files read and programs run (ivle_maint/gates/trusted.py): what
ivle-maint reads, and what it runs as root, is a regular file of bounded
size that only root can change, however it was found.

Each case plants something where ivle-maint reads or looks for a program:
a FIFO (which would block a plain open for ever), a device, a sparse 2 GB
file, a file or directory a student owns or can write.  The answer is one
line, the documented exit status, and nothing changed: no program of the
student's run, the site serving, nothing recorded.  ivle-maint runs with a
timeout on the subprocess (a run that blocks fails the test by its
exception, never by a timed assertion) and a 1 GiB address-space limit (a
file read whole fails it as a traceback instead of eating the machine).

ivle-maint's own directories ([paths] state, run, log, backup) are checked
by the same gate before they are used (safepaths.py): owned by another
user or writable by others, or below such a directory, they are refused
(exit 2) before a planted symlink could be followed; a symlink in place of
the lock, a journal or a log is never followed; under umask 000 every
directory and file gets its explicit mode.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_sandbox.releases import OLD, RELEASES
from support.abuse_helpers import assert_untouched, error_lines, one_error_line
from support.source_tree import source_tree
from support.upgrade_helpers import (
    NEW_KEYS,
    OLD_KEYS,
    REPO,
    at_version_1_0,
    cli,
    journal,
    marker_keys,
    postinst,
    preinst,
    set_setting,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

NOBODY = 65534
ADDRESS_SPACE = 1 << 30
TIMEOUT = 120  # seconds; ivle-maint never needs more here, and never blocks
FIX = "fix the owner and mode, e.g. chown root: and chmod go-w, or choose another"


def bounded(site: Any, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """ivle-maint ARGS on SITE, as cli() does, but killed after TIMEOUT
    seconds and within ADDRESS_SPACE bytes; PATH: its $PATH."""
    env = {**os.environ, **site.env, "PYTHONPATH": str(REPO)}
    if path is not None:
        env["PATH"] = path

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run(
        [sys.executable, "-m", "ivle_maint", *args], env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False, preexec_fn=limit,
    )


def serving(site: Any) -> bool:
    return site.service_running("apache2") and site.service_running("ivle-usrmgt-server")


# ---------------------------------------------------------------- what is read


def plant(path: Path, kind: str) -> str:
    """Put KIND where PATH was; the gate's reason for refusing it."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path, 0o644)
        return "a FIFO, not a regular file; refused (remove it, or choose another file)"
    if kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # as /dev/zero
        return ("a character device, not a regular file; refused (remove it, or choose "
                "another file)")
    raise AssertionError(kind)


@pytest.fixture
def pending(site: Any) -> tuple[Any, Path]:
    """SITE with its 1.0 migrations recorded and 1.1's unpacked: `db
    migrate` reads the first new migration, returned."""
    assert cli(site, "db", "baseline", OLD_KEYS[-1]).returncode == 0
    unpack(site)
    return site, site.migrations / f"{NEW_KEYS[0]}.sql"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_migration_that_is_no_regular_file_is_refused_never_opened(
        pending: tuple[Any, Path], kind: str) -> None:
    """A FIFO would block the read for ever; /dev/zero would be read until
    memory runs out."""
    site, path = pending
    why = plant(path, kind)
    done = bounded(site, "db", "migrate")
    assert done.returncode == 1, done.stderr
    assert one_error_line(done) == f"ivle-maint: error: migration {path}: {why}"
    assert marker_keys(site) == OLD_KEYS


def test_a_sparse_2_gb_migration_is_refused_unread(pending: tuple[Any, Path]) -> None:
    site, path = pending
    os.truncate(path, 2 << 30)
    done = bounded(site, "db", "migrate")
    assert done.returncode == 1, done.stderr
    assert one_error_line(done) == (f"ivle-maint: error: migration {path}: larger than "
                                    f"{16 << 20} bytes, the most ivle-maint reads there; "
                                    "refused (remove it, or choose another file)")
    assert marker_keys(site) == OLD_KEYS


@pytest.mark.parametrize("which", ["settings file", "ivle.conf"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_settings_that_are_no_regular_file_are_refused_never_opened(
        site: Any, which: str, kind: str) -> None:
    path = site.maint_conf if which == "settings file" else site.ivle_conf
    why = plant(path, kind)
    done = bounded(site, "hook", "preinst", "upgrade", "1.0", "1.1")
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: {which} {path}: {why}"]
    assert serving(site) and journal(site) == {}


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_media_record_that_is_no_regular_file_is_refused(site: Any, kind: str) -> None:
    before = site.ivle_conf.read_bytes()
    site.state_dir.mkdir(parents=True, exist_ok=True)
    record = site.state_dir / "media-versions.json"
    why = plant(record, kind)
    done = bounded(site, "media", "set", "--reinstall", "1.0")
    assert done.returncode == 1, done.stderr
    assert one_error_line(done) == f"ivle-maint: error: {record}: {why}"
    assert site.ivle_conf.read_bytes() == before


def test_a_sparse_2_gb_ivle_conf_is_refused_unread(site: Any) -> None:
    os.truncate(site.ivle_conf, 2 << 30)
    done = bounded(site, "hook", "preinst", "upgrade", "1.0", "1.1")
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: ivle.conf {site.ivle_conf}: larger than "
                                 f"{1 << 20} bytes, the most ivle-maint reads there; refused "
                                 "(remove it, or choose another file)"]
    assert serving(site) and journal(site) == {}


def test_a_directory_given_as_settings_is_exit_2_not_all_defaults(site: Any,
                                                                 tmp_path: Path) -> None:
    """`--config /etc/ivle` (the directory, not the file) would run with the
    defaults: /etc/init.d, /var/lib/ivle-maint, the site's real paths."""
    consoles = site.console_pids()
    done = cli(site, "--config", str(tmp_path), "hook", "preinst", "upgrade", "1.0", "1.1")
    assert done.returncode == 2
    assert done.stderr == (f"ivle-maint: error: settings file {tmp_path}: a directory, not a "
                           "regular file; refused (remove it, or choose another file)\n")
    assert serving(site) and site.console_pids() == consoles


# ------------------------------------------------- who may change what is read


@pytest.mark.parametrize("which", ["settings file", "ivle.conf"])
@pytest.mark.parametrize("fault", ["owned by nobody", "mode 0666", "mode 0664"])
def test_files_that_decide_what_root_runs_are_refused_if_others_can_change_them(
        site: Any, which: str, fault: str) -> None:
    """Whoever can edit them names the init scripts, IVLE's tools and the
    migrations that root runs: refused before anything starts."""
    path = site.maint_conf if which == "settings file" else site.ivle_conf
    before = path.read_bytes()
    if fault == "owned by nobody":
        os.chown(path, NOBODY, NOBODY)
        why = f"owned by uid {NOBODY}, not root"
    else:
        path.chmod(int(fault.split()[1], 8))
        why = f"writable by others (mode {fault.split()[1]})"
    done = preinst(site)
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: {which} {path}: {why}; refused ({FIX} "
                                 "file)"]
    assert path.read_bytes() == before
    assert serving(site) and journal(site) == {}


def settings_owned_by_nobody(site: Any) -> str:
    os.chown(site.maint_conf, NOBODY, NOBODY)
    return (f"settings file {site.maint_conf}: owned by uid {NOBODY}, not root; refused "
            f"({FIX} file)")


def ivle_conf_writable_by_others(site: Any) -> str:
    site.ivle_conf.chmod(0o666)
    return f"ivle.conf {site.ivle_conf}: writable by others (mode 0666); refused ({FIX} file)"


FAULTS: dict[str, Callable[[Any], str]] = {
    "settings file owned by nobody": settings_owned_by_nobody,
    "ivle.conf writable by others": ivle_conf_writable_by_others,
}

# Each command and what it would have changed.
COMMANDS = {
    "jails rebuild": ("jails", "rebuild"),
    "jails remake-users": ("jails", "remake-users"),
    "media set": ("media", "set", "--reinstall", "1.0"),
    "mounts unmount": ("mounts", "unmount"),
    "consoles stop": ("consoles", "stop"),
    "db baseline": ("db", "baseline", OLD_KEYS[-1]),
    "db migrate": ("db", "migrate"),
    "services stop": ("services", "stop"),
}


def snapshot(site: Any) -> tuple[bytes, int]:
    st = site.ivle_conf.stat()
    return site.ivle_conf.read_bytes(), st.st_mtime_ns


def assert_nothing_done(site: Any, before: tuple[bytes, int]) -> None:
    assert snapshot(site) == before
    assert serving(site)
    assert site.console_pids() and site.mounts()
    assert marker_keys(site) == []
    assert journal(site) == {}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_refuse_settings_others_can_change_before_acting(
        site: Any, command: str, fault: str) -> None:
    """Whoever can edit them names the programs root runs ([commands]), the
    init scripts, the migrations, the jail mounts and the database: every
    command that acts refuses them first, as the upgrade does."""
    why = FAULTS[fault](site)
    before = snapshot(site)
    logs = set(site.maint_log_dir.glob("*")) if site.maint_log_dir.exists() else set()
    done = cli(site, *COMMANDS[command])
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: {why}"]
    assert_nothing_done(site, before)
    assert not site.maint_log_dir.exists() or set(site.maint_log_dir.glob("*")) == logs


@pytest.mark.parametrize("baselined", [False, True], ids=["no marker", "marker"])
@pytest.mark.parametrize("unsafe", ["mode 0666", "mode 0664", "owned by nobody",
                                    "directory mode 1777"])
def test_a_migration_others_can_write_is_never_run(site: Any, unsafe: str,
                                                   baselined: bool) -> None:
    """Migrations run with the database owner's rights: a file (or the
    directory listing them) another user can change is refused before
    anything stops, with the preflight's one line."""
    if baselined:
        assert cli(site, "db", "baseline", OLD_KEYS[-1]).returncode == 0
    marker = marker_keys(site)
    unpack(site)
    path = site.migrations / f"{NEW_KEYS[0]}.sql"
    if unsafe.startswith("mode"):
        mode = unsafe.split()[1]
        path.chmod(int(mode, 8))
        expected = f"migration {path}: writable by others (mode {mode}); refused ({FIX} file)"
    elif unsafe.startswith("directory"):
        site.migrations.chmod(0o1777)
        expected = (f"migrations directory {site.migrations}: writable by others (mode 1777); "
                    f"refused ({FIX} directory)")
    else:
        os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
        expected = f"migration {path}: owned by uid {NOBODY}, not root; refused ({FIX} file)"
    done = cli(site, "db", "migrate")
    assert done.returncode == 1, done.stderr
    assert one_error_line(done) == f"ivle-maint: error: {expected}"
    assert marker_keys(site) == marker


# ---------------------------------------------------------------- what is run


@pytest.mark.parametrize("fault", ["script owned by nobody", "script mode 0777",
                                   "script mode 0775", "init.d owned by nobody",
                                   "init.d mode 0777"])
def test_init_scripts_others_can_change_are_never_run(site: Any, fault: str) -> None:
    """ivle-maint runs [services] initd_dir/NAME as root: a script (or its
    directory) another user can change would run that user's commands."""
    script = site.initd / "apache2"
    target = site.initd if fault.startswith("init.d") else script
    kind = "directory" if target == site.initd else "file"
    what = "[services] initd_dir" if kind == "directory" else "init script"
    if "nobody" in fault:
        os.chown(target, NOBODY, NOBODY)
        why = f"owned by uid {NOBODY}, not root"
    else:
        mode = fault.rsplit(maxsplit=1)[-1]
        target.chmod(int(mode, 8))
        why = f"writable by others (mode {mode})"
    expected = f"ivle-maint: error: {what} {target}: {why}; refused ({FIX} {kind})"
    before = snapshot(site)
    for args in (("services", "stop", "web"), ("services", "status"), ("hook", "preinst",
                                                                        "upgrade", "1.0", "1.1")):
        done = cli(site, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert error_lines(done) == [expected], args
        assert_nothing_done(site, before)


STUDENT_PROGRAM = """\
#!/bin/sh
touch {witness}
"""


FIRST_ON_PATH = Path("/usr/local/sbin")  # the first directory of the fixed PATH (gates/environment)


@contextmanager
def bound_over(source: Path, target: Path) -> Iterator[None]:
    """SOURCE bind-mounted over TARGET (the test run's private mount namespace)."""
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.parametrize("fault", ["owned by a student", "in a directory a student owns",
                                   "in a directory others can write",
                                   "in a sticky directory others can write"])
def test_a_program_found_on_path_where_a_student_can_change_it_is_never_run(
        site: Any, tmp_path: Path, fault: str) -> None:
    """[commands] remakeuser = ivle-remakeuser (a bare name, the default)
    is looked up on ivle-maint's own PATH (the caller's is never used); the
    first one found is the one checked and run, so a student's copy in a
    directory of that PATH is refused, never run as root, and never skipped
    for the next one silently."""
    student = tmp_path / "bin"
    student.mkdir()
    os.chmod(tmp_path, 0o755)
    witness = tmp_path / "ran-as-root"
    (student / "ivle-remakeuser").write_text(STUDENT_PROGRAM.format(witness=witness))
    (student / "ivle-remakeuser").chmod(0o755)
    program, where = FIRST_ON_PATH / "ivle-remakeuser", FIRST_ON_PATH
    if fault == "owned by a student":
        os.chown(student / "ivle-remakeuser", NOBODY, NOBODY)
        why = f"owned by uid {NOBODY}, not root; refused ({FIX} file)"
    elif fault == "in a directory a student owns":
        os.chown(student, NOBODY, NOBODY)
        why = f"{where} above it is owned by uid {NOBODY}; refused ({FIX} file)"
    elif fault == "in a directory others can write":
        student.chmod(0o777)
        why = f"{where} above it is writable by others (mode 0777); refused ({FIX} file)"
    else:  # sticky: others cannot rename it, but a program is not kept where they write
        student.chmod(0o1777)
        why = (f"{where}, which holds it, is writable by others (mode 1777); refused "
               f"({FIX} directory)")
    set_setting(site, "commands", "remakeuser", "ivle-remakeuser")
    with bound_over(student, FIRST_ON_PATH):
        done = bounded(site, "jails", "remake-users")
    assert done.returncode == 2, done.stderr
    assert one_error_line(done) == f"ivle-maint: error: program {program}: {why}"
    assert not witness.exists()
    assert serving(site)


def test_the_callers_path_is_never_searched_for_a_program(site: Any, tmp_path: Path) -> None:
    """A student's directory first on the caller's PATH: ivle-maint looks
    programs up on its own fixed PATH only (gates/environment), so the
    student's copy is never found, let alone run."""
    student = tmp_path / "bin"
    student.mkdir()
    os.chmod(tmp_path, 0o755)
    witness = tmp_path / "ran-as-root"
    (student / "ivle-remakeuser").write_text(STUDENT_PROGRAM.format(witness=witness))
    (student / "ivle-remakeuser").chmod(0o755)
    os.chown(student / "ivle-remakeuser", NOBODY, NOBODY)
    set_setting(site, "commands", "remakeuser", "ivle-remakeuser")
    done = bounded(site, "jails", "remake-users", path=f"{student}:{os.environ.get('PATH', '')}")
    assert done.returncode != 0
    assert "ivle-remakeuser" in one_error_line(done)
    assert not witness.exists()
    assert serving(site)


SETUP_WITNESS = """\
#!/usr/bin/python3
open({witness!r}, "w").close()
"""


@pytest.mark.parametrize("fault", ["tree owned by a student", "module others can write",
                                   "symlink to a student's file"])
@pytest.mark.parametrize("to", [(), ("--to", "1.1")], ids=["version asked", "version given"])
def test_a_source_tree_others_can_change_never_has_its_setup_py_run(
        site: Any, tmp_path: Path, fault: str, to: tuple[str, ...]) -> None:
    """setup.py imports the tree's code and runs as root, even only to say
    its version: a tree anyone but root can change is refused before
    anything runs or stops."""
    tree = source_tree(site, RELEASES["1.1"])
    tree_name = tree
    os.chmod(tmp_path, 0o755)
    witness = tmp_path / "setup-py-ran"
    setup = tree / "setup.py"
    setup.write_text(SETUP_WITNESS.format(witness=str(witness)) + setup.read_text()
                     .split("\n", 1)[1])
    module = tree / "ivle" / "__init__.py"
    module.parent.mkdir()
    module.write_text("")
    if fault == "tree owned by a student":
        for path in [tree, *tree.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        why = f"owned by uid {NOBODY}, not root"
        advice = "copy it to a directory only root can write, or chown -R root:"
    elif fault == "module others can write":
        module.chmod(0o666)
        why = f"{module} in it is writable by others (mode 0666)"
        advice = "chmod -R go-w it"
    else:
        elsewhere = tmp_path / "student"
        elsewhere.mkdir()
        os.chown(elsewhere, NOBODY, NOBODY)
        (elsewhere / "helper.py").write_text("")
        (tree / "ivle" / "helper.py").symlink_to(elsewhere / "helper.py")
        tree_name = tree / "ivle" / "helper.py"
        why = f"{elsewhere} above it is owned by uid {NOBODY}"
        advice = f"{FIX} file"
    consoles = site.console_pids()
    done = bounded(site, "upgrade", "--from", "1.0", *to, "--source", str(tree))
    assert done.returncode == 2, done.stderr
    assert one_error_line(done) == f"ivle-maint: error: source tree {tree_name}: {why}; refused " \
                                   f"({advice})"
    assert not witness.exists()
    assert serving(site) and site.console_pids() == consoles
    assert site.installed_version() == "1.0" and marker_keys(site) == []
    assert sorted(OLD) == sorted(p.name for p in site.migrations.glob("*.sql"))


# ---------------------------------------------- ivle-maint's own directories and files

def directory(site: Any, key: str) -> Path:
    return {"state": site.state_dir, "run": site.maint_run_dir, "log": site.maint_log_dir,
            "backup": site.backup_dir}[key]


@pytest.mark.parametrize("key", ["state", "run", "log", "backup"])
@pytest.mark.parametrize("fault", ["owned by nobody", "mode 0777"])
def test_unsafe_state_directories_are_refused(site: Any, key: str, fault: str,
                                              tmp_path: Path) -> None:
    path = directory(site, key)
    path.mkdir(parents=True, exist_ok=True)
    if fault == "owned by nobody":
        os.chown(path, NOBODY, NOBODY)
        why = f"owned by uid {NOBODY}, not root"
    else:
        path.chmod(0o777)
        why = "writable by others (mode 0777)"
    # What such a directory allows: the owner plants a symlink to root's file.
    victim = tmp_path / "root-owned"
    victim.write_text("precious\n")
    for name in ("lock", "installed.json", "pinned.json"):
        (path / name).symlink_to(victim)
    done = preinst(site)
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: [paths] {key} {path}: {why}; refused "
                                 "(fix the owner and mode, e.g. chown root: and chmod go-w, "
                                 "or choose another directory)"]
    assert victim.read_text() == "precious\n"
    assert_untouched(site)


def test_a_directory_above_owned_by_another_user_is_refused(site: Any) -> None:
    os.chown(site.state_dir.parent, NOBODY, NOBODY)
    done = preinst(site)
    assert done.returncode == 2
    (line,) = error_lines(done)
    assert f"{site.state_dir.parent} above it is owned by uid {NOBODY}" in line
    assert_untouched(site)


def test_a_symlinked_lock_file_is_not_followed(site: Any, tmp_path: Path) -> None:
    """Even in a safe directory, the lock (truncated by each run) is never a symlink."""
    victim = tmp_path / "root-owned"
    victim.write_text("precious\n")
    site.maint_run_dir.mkdir(parents=True, exist_ok=True)
    (site.maint_run_dir / "lock").symlink_to(victim)
    done = preinst(site)
    assert done.returncode == 1
    assert error_lines(done) == [f"ivle-maint: error: {site.maint_run_dir / 'lock'}: "
                                 "is a symlink; refused (remove it)"]
    assert victim.read_text() == "precious\n"
    assert_untouched(site)


def test_a_symlinked_journal_is_neither_read_nor_replaced(site: Any, tmp_path: Path) -> None:
    victim = tmp_path / "root-owned.json"
    victim.write_text('{"not": "a journal"}\n')
    (site.state_dir / "journal").mkdir(mode=0o700)
    link = site.state_dir / "journal" / "1.0_to_1.1.json"
    link.symlink_to(victim)
    done = preinst(site)
    assert done.returncode == 1
    assert error_lines(done) == [f"ivle-maint: error: {link}: is a symlink; refused (remove it)"]
    assert victim.read_text() == '{"not": "a journal"}\n' and link.is_symlink()
    assert site.service_running("apache2")


@contextmanager
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_directories_get_explicit_modes_under_umask_000(site: Any) -> None:
    """Created by the upgrade itself, under umask 000: never writable by others."""
    for key in ("state", "run", "log", "backup"):
        path = directory(site, key)
        if path.exists():
            for child in sorted(path.rglob("*"), reverse=True):
                child.unlink() if not child.is_dir() or child.is_symlink() else child.rmdir()
            path.rmdir()
    with umask_000():
        assert preinst(site).returncode == 0
    unpack(site)  # dpkg's unpack, under dpkg's own umask
    with umask_000():
        done = postinst(site)
    assert done.returncode == 0, done.stderr
    modes = {str(p.relative_to(site.root)): stat.S_IMODE(p.stat().st_mode) for p in (
        site.state_dir, site.state_dir / "journal", site.maint_run_dir, site.maint_log_dir,
        site.backup_dir)}
    assert modes == {
        "var/lib/ivle-maint": 0o755,
        "var/lib/ivle-maint/journal": 0o700,
        "run/ivle-maint": 0o755,
        "var/log/ivle-maint": 0o750,
        "var/backups/ivle-maint": 0o700,
    }
    # Files too: dumps and journals root's alone, logs root:adm, none writable by others.
    files = {p: stat.S_IMODE(p.stat().st_mode) for key in ("state", "log", "backup")
             for p in directory(site, key).rglob("*") if p.is_file()}
    assert [p for p in files if p.suffix == ".dump"]
    assert all(mode == 0o600 for p, mode in files.items()
               if p.suffix == ".dump" or p.parent.name == "journal")
    assert all(mode == 0o640 for p, mode in files.items() if p.suffix == ".log")
    assert not [p for p, mode in files.items() if mode & 0o022]


def test_log_rotation_never_follows_a_symlink_named_like_a_log(node_factory: Any,
                                                               tmp_path: Path) -> None:
    """[logs] keep = 2 with a link among the logs: its target is neither
    copied into the log directory nor counted, real logs are not deleted for it."""
    node = at_version_1_0(node_factory(users=2, consoles=1))
    set_setting(node, "logs", "keep", "2")
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    node.maint_log_dir.mkdir(parents=True, exist_ok=True)
    old = node.maint_log_dir / "jails-old-20200101T000000Z.log"
    old.write_text("an earlier run\n")
    os.utime(old, (1_000_000, 1_000_000))
    link = node.maint_log_dir / "upgrade-planted-20000101T000000Z.log"
    link.symlink_to(victim)
    assert preinst(node).returncode == 0
    assert victim.read_text() == "root:secret\n" and link.is_symlink()
    assert not link.with_name(link.name + ".gz").exists()
    # keep = 2: the earlier run's log (the previous one: plain) and this run's.
    assert old.read_text() == "an earlier run\n"
    assert len(list(node.maint_log_dir.glob("upgrade-1.0_to_1.1-*.log"))) == 1


def state_dir_writable_by_others(site: Any) -> str:
    site.state_dir.mkdir(parents=True, exist_ok=True)
    site.state_dir.chmod(0o777)
    return (f"[paths] state {site.state_dir}: writable by others (mode 0777); refused (fix "
            "the owner and mode, e.g. chown root: and chmod go-w, or choose another directory)")


def test_media_set_refuses_a_state_directory_others_can_write(site: Any) -> None:
    """The record of used values lives there: checked before ivle.conf is read."""
    why = state_dir_writable_by_others(site)
    before = snapshot(site)
    done = cli(site, "media", "set", "--reinstall", "1.0")
    assert done.returncode == 2, done.stderr
    assert error_lines(done) == [f"ivle-maint: error: {why}"]
    assert_nothing_done(site, before)
    assert not (site.state_dir / "media-versions.json").exists()


def test_a_log_bigger_than_a_state_files_bound_is_still_rotated(tmp_path: Path) -> None:
    """`[logs] output_lines = 0` keeps a jail build's whole output: a log of
    any size is compressed in pieces through the gate, never refused there."""
    import gzip

    from ivle_maint.logfile import prune

    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o750)
    big = log_dir / "upgrade-20260101T000000Z.n000001.log"
    with big.open("wb") as handle:  # 20 MiB of text, beyond the state files' 16 MiB
        handle.write(b"apt: setting up a package in the jail\n" * (20 * 2**20 // 38))
    size = big.stat().st_size
    newer = log_dir / "upgrade-20260101T000001Z.n000002.log"
    newer.write_text("the newest\n")
    prune(log_dir, keep=3)
    packed = log_dir / (big.name + ".gz")
    assert sorted(p.name for p in log_dir.iterdir()) == [packed.name, newer.name]
    with gzip.open(packed, "rb") as handle:
        assert sum(len(chunk) for chunk in iter(lambda: handle.read(2**20), b"")) == size


def test_a_fifo_planted_as_a_partial_dump_never_blocks_the_cleanup(tmp_path: Path) -> None:
    """A killed run's `.partial` dumps are opened to ask their flock: a FIFO
    in their place (no writer) is left alone, never opened to block."""
    from ivle_maint.db.backup import remove_stale_partials

    backups = tmp_path / "backup"
    backups.mkdir(mode=0o700)
    os.mkfifo(backups / ".ivle-1.0.dump.partial")
    stale = backups / ".ivle-0.9.dump.partial"
    stale.write_bytes(b"half a dump")
    check = ("import sys; from pathlib import Path\n"
             "from ivle_maint.db.backup import remove_stale_partials as r\n"
             "print(sorted(p.name for p in r(Path(sys.argv[1]))))")
    try:
        done = subprocess.run([sys.executable, "-c", check, str(backups)], capture_output=True,
                              text=True, timeout=30, check=False,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail("remove_stale_partials blocked on a FIFO")
    assert done.stdout == "['.ivle-0.9.dump.partial']\n", done.stderr
    assert remove_stale_partials(backups) == []
    assert (backups / ".ivle-1.0.dump.partial").exists() and not stale.exists()


@pytest.mark.parametrize("path", ["/proc/kmsg", "/proc/self/environ",
                                  "/sys/kernel/mm/transparent_hugepage/enabled"])
def test_a_kernel_file_named_as_settings_is_refused_never_read(path: str) -> None:
    """/proc/kmsg is a regular file, root's, 0400, of size 0: a read of it
    blocks for ever once the kernel's messages are read (and takes them
    from syslog).  Files of proc, sysfs, FUSE... are refused unread."""
    if not os.path.exists(path):
        pytest.skip(f"{path} absent here")
    env = {**os.environ, "PYTHONPATH": str(REPO), "IVLE_MAINT_CONF": path}
    try:
        done = subprocess.run([sys.executable, "-m", "ivle_maint", "status"], env=env,
                              capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ivle-maint blocked reading {path}")
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert f"settings file {path}: on a " in line and "filesystem" in line, line


def _through_fuse(purpose: str, path: Path) -> object:
    from ivle_maint.gates import trusted

    if purpose == "migrations directory":
        return trusted.check_directory(path, trusted.MIGRATIONS_DIR)
    if purpose == "source tree":
        return trusted.check_tree(path)
    if purpose == "settings file":
        return trusted.read(path / "ivle-maint.conf", trusted.SETTINGS)
    return trusted.program(str(path / "ivle-remakeuser"))


@settings(max_examples=16, deadline=None)
@given(purpose=st.sampled_from(["migrations directory", "source tree", "settings file",
                                "program"]),
       via=st.sampled_from(["itself", "a root symlink", "a directory below"]))
def test_a_fuse_filesystem_saying_root_owns_it_is_never_trusted(purpose: str, via: str) -> None:
    """A user's fusermount (allow_other) whose daemon says root owns every
    file, 0755: no directory on the way, file, program or source tree on it
    is trusted, whatever it claims.  Before: a migrations directory or a
    source tree there passed the gate (its setup.py then ran as root)."""
    from ivle_maint.gates.trusted import Refused
    from support.fuse_daemon import fuse_mount

    top = Path(tempfile.mkdtemp(prefix="ivle-fuse-"))
    point = top / "mnt"
    point.mkdir()
    try:
        with fuse_mount(point, uid=0):
            if via == "a root symlink":
                (top / "link").symlink_to(point)
                path = top / "link"
            else:
                path = point if via == "itself" else point / "sub"
            with pytest.raises(Refused, match=r"is on a fuse filesystem"):
                _through_fuse(purpose, path)
    finally:
        shutil.rmtree(top)

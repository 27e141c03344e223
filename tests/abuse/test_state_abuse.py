"""ivle-maint's own state against a hostile or careless administrator:
unsafe owners and modes of its directories, symlinks where its files go,
umask 000, malformed settings and ivle.conf.

Each case: a one-line error, the documented exit status, the site left
serving, nothing written (the files given byte for byte as they were).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from abuse_helpers import error_lines
from upgrade_helpers import cli, journal, postinst, preinst, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

NOBODY = 65534


def assert_untouched(site: Any) -> None:
    """Refused before anything started: serving, no journal."""
    assert site.service_running("apache2")
    assert journal(site) == {}


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


MALFORMED_SETTINGS = [
    b"[node\nrole = both\n",
    b"[path]\nstate = /tmp/elsewhere\n",
    b"[jails]\nlazy_unmuont = true\n",
    b"[database]\nbackup_keep = many\n",
]


def preinst_refuses_malformed(site: Any, path: Path, text: bytes) -> bytes:
    """TEXT appended to PATH: the preinst exits 2 with one line naming PATH,
    which stays byte for byte as it was given; returns what it holds."""
    bad = path.read_bytes() + b"\n" + text
    path.write_bytes(bad)
    done = preinst(site)
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert line.startswith(f"ivle-maint: error: {path}")
    assert path.read_bytes() == bad
    assert_untouched(site)
    return bad


@pytest.mark.parametrize("text", MALFORMED_SETTINGS)
def test_malformed_settings_exit_2_and_stay_byte_for_byte(site: Any, text: bytes) -> None:
    preinst_refuses_malformed(site, site.maint_conf, text)


MALFORMED_IVLE_CONF = [
    b"[media\nversion = 1.0\n",
    b"[database]\nport = fifty\n",
    b"[usrmgt]\nmagic = \xff\xfe not UTF-8\n",
]


@pytest.mark.parametrize("text", MALFORMED_IVLE_CONF)
def test_malformed_ivle_conf_exits_2_and_stays_byte_for_byte(site: Any, text: bytes) -> None:
    bad = preinst_refuses_malformed(site, site.ivle_conf, text)
    media = cli(site, "media", "set", "1.1")
    assert media.returncode in (1, 2) and len(error_lines(media)) == 1
    assert site.ivle_conf.read_bytes() == bad

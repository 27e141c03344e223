"""Finding, ordering and vetting migration files."""

from __future__ import annotations

import datetime
import itertools
import os
from pathlib import Path

import pytest

from ivle_maint.db import discovery
from ivle_maint.errors import MaintError

FAKES = Path(__file__).resolve().parents[2] / "fakes" / "migrations"


def make(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;\n")
    return tmp_path


def test_order_is_date_then_number_with_bare_date_first(tmp_path: Path) -> None:
    make(
        tmp_path,
        "20090212-02.sql",
        "20090105-01.sql",
        "20090212.sql",
        "20081231-10.sql",
        "20090212-01.sql",
        "20090212-10.sql",
        "README",
    )
    keys = [m.key for m in discovery.discover(tmp_path)]
    assert keys == [
        "20081231-10",
        "20090105-01",
        "20090212",
        "20090212-01",
        "20090212-02",
        "20090212-10",
    ]


def test_non_sql_files_and_directories_are_ignored(tmp_path: Path) -> None:
    make(tmp_path, "README", "notes.txt", "20090101-01.sql")
    (tmp_path / "old.sql").mkdir()
    assert [m.name for m in discovery.discover(tmp_path)] == ["20090101-01.sql"]


@pytest.mark.parametrize(
    "name",
    [
        "fix-login.sql",
        "2009010-01.sql",
        "20090101_01.sql",
        "20090101-01a.sql",
        "20091301-01.sql",
        "20090101-.sql",
    ],
)
def test_sql_file_with_a_bad_name_is_an_error(tmp_path: Path, name: str) -> None:
    make(tmp_path, "20090101-01.sql", name)
    with pytest.raises(MaintError, match="not a migration file name") as info:
        discovery.discover(tmp_path)
    assert name in str(info.value)


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    make(tmp_path, "20090101-1.sql", "20090101-01.sql")
    with pytest.raises(MaintError, match="are both migration 20090101-01"):
        discovery.discover(tmp_path)


def test_duplicate_keys_across_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make(a, "20090101-01.sql")
    make(b, "20090101-01.SQL")
    with pytest.raises(MaintError, match="both migration 20090101-01"):
        discovery.from_files([a / "20090101-01.sql", b / "20090101-01.SQL"])


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MaintError, match="no such migrations directory"):
        discovery.discover(tmp_path / "absent")


def test_parse_key_forms() -> None:
    assert discovery.parse_key("20090101-01") == ((20090101, 1), "20090101-01")
    assert discovery.parse_key("20090101-1.sql") == ((20090101, 1), "20090101-01")
    assert discovery.parse_key("20090101") == ((20090101, -1), "20090101")
    with pytest.raises(ValueError, match="not a date"):
        discovery.parse_key("20090230-01")


def test_find_by_key_file_name_or_path(tmp_path: Path) -> None:
    migrations = discovery.discover(make(tmp_path, "20090101-01.sql", "20090102.sql"))
    assert discovery.find(migrations, "20090101-01").name == "20090101-01.sql"
    assert discovery.find(migrations, "20090102.sql").key == "20090102"
    assert discovery.find(migrations, str(tmp_path / "20090102.sql")).key == "20090102"
    with pytest.raises(MaintError, match="no migration 20090103-01"):
        discovery.find(migrations, "20090103-01")
    with pytest.raises(MaintError, match="not a migration"):
        discovery.find(migrations, "latest")


def test_fakes_are_discovered_in_order() -> None:
    keys = [m.key for m in discovery.discover(FAKES)]
    assert keys == sorted(keys, key=lambda k: discovery.parse_key(k)[0])
    assert keys[:2] == ["20090105", "20090105-01"]
    assert len(keys) == 7


# -- who may write the files (root only) --------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="checks only apply to root")


@needs_root
def test_root_owned_directory_passes(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir(mode=0o755)
    make(d, "20090101-01.sql")
    discovery.check_writers(d, [d / "20090101-01.sql"])


@needs_root
@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_group_or_world_writable_directory_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "m"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(MaintError, match=f"{d}: writable by others \\(mode {mode:04o}\\)"):
        discovery.check_writers(d)


@needs_root
def test_file_owned_by_another_user_refused(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    f = make(d, "20090101-01.sql") / "20090101-01.sql"
    os.chown(f, 65534, 65534)
    with pytest.raises(MaintError, match=r"20090101-01\.sql: owned by uid 65534, not root"):
        discovery.check_writers(d, [f])


@needs_root
def test_writable_file_refused(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    f = make(d, "20090101-01.sql") / "20090101-01.sql"
    f.chmod(0o666)
    with pytest.raises(MaintError, match="writable by others"):
        discovery.check_writers(d, [f])


@needs_root
def test_parent_owned_by_another_user_refused(tmp_path: Path) -> None:
    parent = tmp_path / "home"
    (parent / "m").mkdir(parents=True)
    os.chown(parent, 65534, 65534)
    with pytest.raises(MaintError, match=f"{parent} above it is owned by uid 65534"):
        discovery.check_writers(parent / "m")


@needs_root
def test_sticky_world_writable_parent_is_fine(tmp_path: Path) -> None:
    parent = tmp_path / "tmp"
    (parent / "m").mkdir(parents=True)
    parent.chmod(0o1777)
    discovery.check_writers(parent / "m")
    (parent / "m").chmod(0o1777)  # but not for the directory itself
    with pytest.raises(MaintError, match="writable by"):
        discovery.check_writers(parent / "m")


@pytest.mark.parametrize("year", ["0000", "2011", "2012"])
def test_a_key_is_a_date_exactly_when_strptime_says_so(year: str) -> None:
    """parse_key checks the date without strptime (it loads _strptime and
    the locale's names: `db status` pays for neither); the verdict is the same."""
    for month, day in itertools.product(range(100), range(100)):
        text = f"{year}{month:02d}{day:02d}"
        try:
            datetime.datetime.strptime(text, "%Y%m%d")
            expected = True
        except ValueError:
            expected = False
        try:
            discovery.parse_key(text)
            found = True
        except ValueError:
            found = False
        assert found == expected, text

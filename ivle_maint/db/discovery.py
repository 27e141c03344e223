"""Find IVLE's migration files, order them, and have the gate check them.

IVLE ships ``userdb/migrations/YYYYMMDD-NN.sql`` (and a few bare
``YYYYMMDD.sql``, which come before ``-01`` of the same day) beside files
that are not migrations, such as a README.  A ``.sql`` file whose name
breaks that pattern, or two files with the same key, is an error: skipping
it silently could skip a schema change.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MaintError, UsageError
from ..gates import trusted

_NAME = re.compile(r"([0-9]{8})(?:-([0-9]+))?\Z")  # \Z: "$" would take a trailing newline
SUFFIX = ".sql"


@dataclass(frozen=True, order=True)
class Migration:
    """One migration file; instances sort by date, then number."""

    order: tuple[int, int]
    key: str = field(compare=False)
    path: Path = field(compare=False)

    @property
    def name(self) -> str:
        return self.path.name


def parse_key(text: str) -> tuple[tuple[int, int], str]:
    """The sort order and canonical key of ``20090101-01`` (``.sql`` allowed).

    Raises ValueError for anything else, including dates that do not exist.
    """
    stem = text[: -len(SUFFIX)] if text.lower().endswith(SUFFIX) else text
    match = _NAME.match(stem)
    if not match:
        raise ValueError(f"{text!r} is not YYYYMMDD-NN or YYYYMMDD")
    day, number = match.groups()
    try:  # strptime("%Y%m%d") says the same of 8 digits, but loads _strptime and the locale's names
        datetime.date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError:
        raise ValueError(f"{text!r}: {day} is not a date") from None
    if number is None:
        return (int(day), -1), day  # a bare day sorts before its -00/-01
    return (int(day), int(number)), f"{day}-{int(number):02d}"


def migration_for(path: Path) -> Migration:
    """The Migration of one file, or a MaintError naming the bad name."""
    try:
        order, key = parse_key(path.name)
    except ValueError as exc:
        raise MaintError(f"not a migration file name: {exc}", path=path) from None
    return Migration(order, key, path)


def from_files(paths: Iterable[Path]) -> list[Migration]:
    """Migrations of the given files, in order; duplicate keys are an error."""
    found: dict[str, Migration] = {}
    for path in paths:
        # Path(a Path) is a new one, 12 us each: 303 of them in `db status`.
        migration = migration_for(path if isinstance(path, Path) else Path(path))
        other = found.get(migration.key)
        if other is not None:
            raise MaintError(
                f"{other.path} and {migration.path} are both migration {migration.key}"
            )
        found[migration.key] = migration
    return sorted(found.values())


def discover(directory: Path) -> list[Migration]:
    """Every migration in directory, in order; other non-.sql files (and a
    directory whose name is no migration's) are ignored.

    The listing decides what runs: the gate checks the directory first.
    """
    directory = Path(directory)
    if not trusted.check_directory(directory, trusted.MIGRATIONS_DIR):
        raise MaintError(
            "no such migrations directory (set [paths] migrations or --migrations)",
            path=directory)
    try:
        # scandir: the entry's type from the listing, no stat of each file
        # (`db status` lists every migration); sorted by name, as Paths sort.
        with os.scandir(directory) as listing:
            names = sorted(e.name for e in listing if e.name.lower().endswith(SUFFIX)
                           and not (_is_dir(e) and not _migration_named(e.name)))
    except OSError as exc:
        raise MaintError(f"cannot list: {exc.strerror}", path=directory) from None
    return from_files(directory / name for name in names)


def _migration_named(name: str) -> bool:
    """A directory so named is listed (the gate refuses it): skipped, it
    would skip a schema change silently."""
    try:
        parse_key(name)
    except ValueError:
        return False
    return True


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """As Path.is_dir(): a symlink followed, False when it cannot be told."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def find(migrations: Iterable[Migration], key: str) -> Migration:
    """The migration named by key (``20090101-01``, its file name or path).

    The key is what a person typed: naming no shipped migration is a UsageError.
    """
    try:
        _, wanted = parse_key(Path(key).name)
    except ValueError as exc:
        raise UsageError(f"not a migration: {exc}") from None
    for migration in migrations:
        if migration.key == wanted:
            return migration
    raise UsageError(f"no migration {wanted} among the shipped migrations")


def read(migration: Migration) -> tuple[bytes, str]:
    """The file's bytes, as the gate read them (gates/trusted.py: a regular
    file, root's, at most 16 MiB), and their sha256 (so the checksum is of
    what ran)."""
    try:
        data = trusted.read(migration.path, trusted.MIGRATION)
    except OSError as exc:
        raise MaintError(f"cannot read: {exc.strerror}", path=migration.path) from None
    return data, hashlib.sha256(data).hexdigest()


def checksum(migration: Migration) -> str:
    return read(migration)[1]


def checksums(migrations: Iterable[Migration]) -> Iterator[tuple[Migration, str]]:
    """(migration, checksum) of each, in turn, as checksum() says: read
    through the gate with their directory held open (trusted.read_each),
    not walked again for each file."""
    by_path = {m.path: m for m in migrations}
    paths = list(by_path)
    done = 0
    try:
        for path, data in trusted.read_each(paths, trusted.MIGRATION):
            done += 1
            yield by_path[path], hashlib.sha256(data).hexdigest()
    except OSError as exc:
        raise MaintError(f"cannot read: {exc.strerror}", path=paths[done]) from None


def check_writers(directory: Path, files: Iterable[Path] = ()) -> None:
    """Refuse migrations that anyone but root could have written (the gate).

    They run with the database owner's rights, so a directory, file or
    parent directory that another user can change would let that user
    run SQL as the owner; the directory's listing decides what runs, so
    it is not writable by others even with the sticky bit.
    """
    if not trusted.check_directory(directory, trusted.MIGRATIONS_DIR):
        raise MaintError(
            "no such migrations directory (set [paths] migrations or --migrations)",
            path=directory)
    for path in files:
        if not trusted.check(path, trusted.MIGRATION):
            raise MaintError("cannot read: no such file", path=path)

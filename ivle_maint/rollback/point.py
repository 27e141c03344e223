"""A restore point: what `ivle-maint rollback` needs to give an upgrade's
starting point back, kept on this node until the release is committed.

Every upgrade keeps one, in [paths] state/restore-points/<upgrade>/:

- before anything stops (the preinst, old code installed): the installed
  package itself (rollback/old_package.py: no repository needed later),
  ivle.conf and ivle-maint's settings, each with its sha256;
- when the site stops taking writes (the migrate step, on the master):
  the pre-upgrade dump (held against rotation, db/pins.py) with its
  sha256, the marker's applied keys, each pending migration's class (a
  rollback is code only when every one applied since is additive) and the
  schema's fingerprint;
- before the jail rebuild: the template, kept beside the live one as hard
  links (rsync replaces files, never writes into them), to be renamed back.

It stays pinned until `ivle-maint commit`, or until [rollback]
commit_after_upgrades later upgrades completed, or commit_after_days
passed since its upgrade completed (gates.clock: a clock that jumped
tells nothing, so nothing is committed on its word).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..db import pins
from ..dpkg_calls import PACKAGE_NAME
from ..errors import MaintError
from ..gates import clock, trusted
from ..gates.rewrite import write_state_file
from ..roles import Role
from ..safepaths import open_nofollow, read_nofollow, safe_dir
from ..versions import check as check_version
from ..versions import is_downgrade
from .old_package import KeptPackage  # the gate of its own record
from .trees import remove_tree

if TYPE_CHECKING:
    from ..config import Settings
    from ..context import UpgradeContext

log = logging.getLogger(__name__)

POINTS_DIR = "restore-points"
MANIFEST = "point.json"
LOCK = ".lock"
_SLUG = re.compile(r"[^A-Za-z0-9.+~-]")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def points_dir(settings: Settings) -> Path:
    return settings.path_of("state") / POINTS_DIR


def slug(upgrade: str) -> str:
    """A directory name for an upgrade id ("1.0->1.1@ab12"): printable, no slash."""
    return "upgrade_" + _SLUG.sub("_", upgrade.replace("->", "_to_").replace("@", "."))[:200]


@dataclass
class RestorePoint:
    directory: Path
    upgrade: str
    old: str
    new: str
    role: str
    sequence: int = 0
    taken: dict[str, Any] = field(default_factory=dict)  # clock.Reading
    package_name: str = ""  # dpkg's name for IVLE's package ("": a source install)
    package: dict[str, Any] | None = None  # old_package.KeptPackage.to_json()
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # name: original, sha256
    template: dict[str, str] | None = None  # path, aside
    dump: dict[str, str] | None = None  # path, sha256
    marker: list[str] | None = None  # the applied keys when the dump was taken
    classes: dict[str, str] = field(default_factory=dict)  # pending key: release class
    schema: str | None = None  # rollback/fingerprint.py
    completed: dict[str, Any] | None = None  # clock.Reading when the upgrade completed
    upgrades_since: int = 0  # later upgrades completed on this node
    # Those upgrades' ids: a completion recorded again (a rerun) counts once.
    counted: list[str] = field(default_factory=list)
    committed: bool = False
    rolled_back: bool = False
    # A commit under way (its removal may be half done): no rollback takes it.
    letting_go: bool = False
    # A full rollback's name for the database it swaps out: recorded before
    # the swap, so that a rerun after a kill between the renames finishes it.
    failed_database: str | None = None

    # -- storage -----------------------------------------------------------

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    def save(self) -> None:
        """Write the manifest (a new point; changes go through update())."""
        data = {k: v for k, v in asdict(self).items() if k != "directory"}
        write_state_file(self.manifest, (json.dumps(data, indent=1, sort_keys=True) + "\n")
                         .encode(), mode=0o600)

    def update(self, change: Callable[[RestorePoint], object]) -> None:
        """CHANGE applied to the manifest as it is on disk, under its lock:
        steps that run side by side (migrate, rebuild-jail) each record
        their part, and none writes back another's stale copy."""
        fd = open_nofollow(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = RestorePoint.load(self.directory)
            change(current)
            current.save()
        finally:
            os.close(fd)  # releases the lock
        for name, value in asdict(current).items():
            setattr(self, name, value if name != "directory" else self.directory)

    @classmethod
    def load(cls, directory: Path) -> RestorePoint:
        path = directory / MANIFEST
        try:
            data = json.loads(read_nofollow(path).decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
            point = cls(directory=directory, **data)
        except (OSError, ValueError, TypeError) as exc:
            raise MaintError(f"{path}: unreadable restore point ({exc}): remove its "
                             "directory if it is not needed") from None
        why = _unsound(point)
        if why:
            raise MaintError(f"{path}: unreadable restore point ({why}): remove its "
                             "directory if it is not needed")
        return point

    # -- what it holds -------------------------------------------------------

    @property
    def pinned(self) -> bool:
        return not self.committed and not self.rolled_back and not self.letting_go

    def keep_file(self, name: str, original: Path, purpose: trusted.Purpose) -> None:
        """A copy of ORIGINAL (ivle.conf, the settings) as it is now, read
        through the gate for PURPOSE as the settings loader reads it (root's,
        bounded): a refused file is one line, and nothing of it is kept."""
        if name in self.files:
            return
        try:
            data = trusted.read(original, purpose)
        except FileNotFoundError:
            return
        write_state_file(self.directory / name, data, mode=0o600)
        entry = {"original": str(original), "sha256": hashlib.sha256(data).hexdigest()}
        self.update(lambda p: p.files.update({name: p.files.get(name, entry)}))

    def kept_file(self, name: str) -> bytes:
        """A kept copy, checked against its recorded sha256."""
        entry = self.files.get(name)
        if entry is None:
            raise MaintError(f"restore point {self.upgrade} keeps no {name}")
        data = read_nofollow(self.directory / name)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise MaintError(f"{self.directory / name}: changed since it was kept "
                             "(sha256 differs): the restore point cannot be trusted")
        return data

    def record_dump(self, dump: Path) -> None:
        """The database as the site stopped taking writes: held against rotation."""
        pins.hold(dump.parent, dump.name, self.upgrade)
        kept = {"path": str(dump), "sha256": sha256_of(dump)}
        self.update(lambda p: setattr(p, "dump", p.dump or kept))

    def check_dump(self) -> Path:
        if self.dump is None:
            raise MaintError(f"restore point {self.upgrade} has no dump of the database "
                             "([database] backup was off, or no migration was pending)")
        path = Path(self.dump["path"])
        if not path.is_file():
            raise MaintError(f"{path}: the restore point's dump is gone")
        if sha256_of(path) != self.dump["sha256"]:
            raise MaintError(f"{path}: the restore point's dump changed since it was taken "
                             "(sha256 differs)")
        return path

    def size(self) -> int:
        """Bytes it keeps: its files and its dump (the template's hard links
        share their blocks with the live template until a rebuild replaces them)."""
        total = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        if self.dump is not None:
            with contextlib.suppress(OSError):
                total += Path(self.dump["path"]).stat().st_size
        return total

    def describe(self) -> str:
        state = "committed" if self.committed else "rolled back" if self.rolled_back \
            else "being let go" if self.letting_go else "pinned"
        parts = [f"restore point of {self.old} -> {self.new} ({state}, {human_size(self.size())})"]
        kept = [name for name, present in (
            ("package", self.package), ("database dump", self.dump),
            ("jail template", self.template)) if present]
        kept += sorted(self.files)
        parts.append("keeps " + (", ".join(kept) or "nothing yet"))
        return "; ".join(parts)


_SHA256 = re.compile(r"[0-9a-f]{64}")
_INODE = re.compile(r"[0-9]{1,20}")
# database.kept_name's shape (not imported: this gate runs on every status).
_FAILED_DATABASE = re.compile(r"[^\x00]+_failed_[0-9]{14}")


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _absolute(value: object) -> bool:
    return _text(value) and "\x00" not in str(value) and os.path.isabs(str(value))


def _reading(value: object) -> bool:
    """clock.Reading as asdict() wrote it."""
    if not isinstance(value, dict) or set(value) - {"wall", "mono", "boot"}:
        return False
    wall, mono = value.get("wall"), value.get("mono")
    number = (int, float)
    return (isinstance(wall, number) and not isinstance(wall, bool)
            and (mono is None or (isinstance(mono, number) and not isinstance(mono, bool)))
            and isinstance(value.get("boot", ""), str))


def _unsound(point: RestorePoint) -> str:
    """Why POINT's values cannot be what a run recorded ("" if they can): each
    field is used as it is, as apt's argument (old, package_name), a
    directory renamed back or removed (template), a file read (files, dump),
    a database renamed (failed_database)."""
    for name in ("upgrade", "old", "new", "role"):
        if not isinstance(getattr(point, name), str):
            return f"{name} is not text"
    for name in ("old", "new"):
        try:
            check_version(getattr(point, name))
        except MaintError as exc:
            return f"{name}: {exc}"
    if point.role not in set(Role):
        return f"role {point.role[:20]!a} is no role"
    if not _count(point.sequence) or not _count(point.upgrades_since):
        return "sequence or upgrades_since is not a count"
    if not isinstance(point.counted, list) or not all(_text(u) for u in point.counted):
        return "counted is not a list of upgrades"
    if not (point.taken == {} or _reading(point.taken)) \
            or not (point.completed is None or _reading(point.completed)):
        return "taken or completed is not a clock reading"
    if not isinstance(point.package_name, str) or (
            point.package_name and not PACKAGE_NAME.fullmatch(point.package_name)):
        return "package_name is no package name"
    if point.package is not None:
        try:
            KeptPackage.from_json(point.package)
        except MaintError:
            return "the kept package's record is damaged"
    if not isinstance(point.files, dict) or any(
            not _text(name) or "/" in name or name in (MANIFEST, LOCK) or name.startswith(".")
            or not isinstance(entry, dict) or not _absolute(entry.get("original"))
            or not _SHA256.fullmatch(str(entry.get("sha256", "")))
            for name, entry in point.files.items()):
        return "files is not a list of kept files"
    if point.dump is not None and not (
            isinstance(point.dump, dict) and _absolute(point.dump.get("path"))
            and _SHA256.fullmatch(str(point.dump.get("sha256", "")))):
        return "dump is not a kept dump"
    if point.template is not None:
        why = _unsound_template(point)
        if why:
            return why
    if point.marker is not None and (not isinstance(point.marker, list)
                                     or not all(_text(k) for k in point.marker)):
        return "marker is not a list of migration keys"
    if not isinstance(point.classes, dict) or not all(
            _text(k) and isinstance(v, str) for k, v in point.classes.items()):
        return "classes is not migration keys and their classes"
    if point.schema is not None and not isinstance(point.schema, str):
        return "schema is not text"
    if not all(isinstance(v, bool) for v in (point.committed, point.rolled_back,
                                              point.letting_go)):
        return "committed, rolled_back or letting_go is not true or false"
    if point.failed_database is not None and not (
            isinstance(point.failed_database, str)
            and _FAILED_DATABASE.fullmatch(point.failed_database)
            and len(point.failed_database.encode()) <= 63):
        return "failed_database is not the name a rollback keeps a database under"
    return ""


def _unsound_template(point: RestorePoint) -> str:
    """The template aside must be the one keep.template_aside makes: beside
    the live template, named after this point's upgrade (a rollback renames
    it back, a commit removes it: never any other directory)."""
    kept = point.template
    if not isinstance(kept, dict) or set(kept) - {"path", "aside", "inode"} \
            or not _absolute(kept.get("path")) or not _absolute(kept.get("aside")) \
            or not _INODE.fullmatch(str(kept.get("inode", ""))):
        return "template is not a kept template"
    live = Path(kept["path"])  # as keep.template_aside wrote it
    if not live.name:
        return "template path names no directory"
    if kept["aside"] != str(live.with_name(f"{live.name}.restore-{slug(point.upgrade)}")):
        return "template aside is not the copy kept beside the template for this upgrade"
    return ""


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def all_points(settings: Settings) -> list[RestorePoint]:
    """Every restore point on this node, oldest first (by sequence)."""
    top = points_dir(settings)
    if not top.is_dir():
        return []
    found = [RestorePoint.load(d) for d in sorted(top.iterdir())
             if d.is_dir() and not d.is_symlink() and (d / MANIFEST).exists()]
    return sorted(found, key=lambda p: p.sequence)


def latest_pinned(settings: Settings) -> RestorePoint | None:
    pinned = [p for p in all_points(settings) if p.pinned]
    return pinned[-1] if pinned else None


def for_upgrade(settings: Settings, upgrade: str) -> RestorePoint | None:
    directory = points_dir(settings) / slug(upgrade)
    return RestorePoint.load(directory) if (directory / MANIFEST).exists() else None


def for_rollback(settings: Settings, old: str, new: str) -> RestorePoint | None:
    """The pinned point an OLD -> NEW change goes back to (its upgrade was NEW -> OLD)."""
    found = [p for p in all_points(settings) if p.pinned and (p.new, p.old) == (old, new)]
    return found[-1] if found else None


def attach(ctx: UpgradeContext) -> RestorePoint | None:
    """Set ctx.rollback: the pinned point a downgrade OLD -> NEW goes back to."""
    if ctx.old and ctx.new and is_downgrade(ctx.old, ctx.new):
        ctx.rollback = for_rollback(ctx.settings, ctx.old, ctx.new)
    return ctx.rollback


def open_point(settings: Settings, upgrade: str, old: str, new: str) -> RestorePoint:
    """This upgrade's restore point, made on its first call."""
    point = for_upgrade(settings, upgrade)
    if point is not None:
        return point
    top = points_dir(settings)
    safe_dir(top, 0o700, "[paths] state")
    sequence = max((p.sequence for p in all_points(settings)), default=0) + 1
    directory = top / slug(upgrade)
    safe_dir(directory, 0o700, "[paths] state")
    point = RestorePoint(directory, upgrade, old, new, str(settings.role), sequence,
                         taken=asdict(clock.reading()))
    point.save()
    return point


def commit(settings: Settings, point: RestorePoint) -> list[str]:
    """Let the point go: what it kept is deleted, its dump released to
    rotation; the manifest stays (history).  Returns what was removed.
    Marked first: a commit killed or refused half-way leaves a point no
    rollback takes (never one pinned with its files or template half
    removed), and the next commit or completed upgrade finishes it."""
    point.update(lambda p: setattr(p, "letting_go", True))
    removed = _let_go(point)
    point.update(lambda p: setattr(p, "committed", True))
    return removed


def finish_commits(settings: Settings) -> None:
    """The commits a killed or refused run left half done, finished."""
    for point in all_points(settings):
        if point.letting_go and not point.committed:
            commit(settings, point)


def _let_go(point: RestorePoint) -> list[str]:
    """A committed point's kept files, template copy and dump pin gone (again: idempotent)."""
    removed: list[str] = []
    for entry in point.directory.iterdir():
        if entry.name not in (MANIFEST, LOCK) and entry.is_file():
            entry.unlink()
            removed.append(entry.name)
    if point.template is not None:
        aside = Path(point.template["aside"])
        if aside.is_dir() and not aside.is_symlink():
            remove_tree(aside)
            removed.append(str(aside))
    if point.dump is not None:
        dump = Path(point.dump["path"])
        if dump.parent.is_dir():
            pins.release(dump.parent, point.upgrade)
    return removed


def completed(settings: Settings, upgrade: str, new: str) -> list[RestorePoint]:
    """UPGRADE (to NEW) completed: its point is stamped; older pinned points
    of releases before NEW count one more upgrade (a reinstall does not) and
    are committed by [rollback]'s limits.  The committed."""
    limits = settings["rollback"]
    now = clock.reading()
    try:
        finish_commits(settings)
    except MaintError as exc:  # a mount left in a template copy: said, never in the way
        log.warning("a restore point is still being let go: %s", exc)
    done: list[RestorePoint] = []
    for point in all_points(settings):
        if point.upgrade == upgrade:
            point.update(lambda p: setattr(p, "completed", p.completed or asdict(now)))
            continue
        if not point.pinned or not is_downgrade(new, point.new):
            continue
        point.update(partial(_count_upgrade, upgrade=upgrade))
        by_count = 0 < limits["commit_after_upgrades"] <= point.upgrades_since
        if by_count or _older_than(point, limits["commit_after_days"], now):
            commit(settings, point)
            done.append(point)
    return done


def _count_upgrade(point: RestorePoint, upgrade: str) -> None:
    """UPGRADE completed after POINT's: one more, the first time it is recorded."""
    if upgrade not in point.counted:
        point.counted.append(upgrade)
        point.upgrades_since += 1


def _older_than(point: RestorePoint, days: float, now: clock.Reading) -> bool:
    if days <= 0 or point.completed is None:
        return False
    age = clock.elapsed(clock.Reading(**point.completed), now)
    return age is not None and age >= days * 86400  # unknown (a jumped clock): kept


"""What a release needs of IVLE's upgrade procedure: decided once, before the code changes.

IVLE's procedure takes the site down, rebuilds every jail and changes the
media version on every upgrade.  A release needs each only for what it
changes:

- migrations: a new or changed migration file (NEW's files against OLD's)
  or, on the master, one the database's marker does not hold;
- the jail: ivle-buildjail builds the template from ivle.conf's [jail]
  settings and copies IVLE's own code into it (from [paths]), and
  ivle-remakeuser makes each user's jail where [paths][[jails]] says, so
  its inputs are those settings and every IVLE file but static media, documentation,
  migrations and Apache's configuration (classify()).  The master
  compares them with what the last checked rebuild recorded
  (jails/template.py, [paths] state/jail-inputs.json); a slave, which
  rebuilds nothing, with OLD's files;
- the media version: the version changes, or a static file does;
- the user management server's restart: IVLE's code changed.

A release that needs neither migrations nor a jail rebuild keeps the site
up (Needs.outage False): nothing is stopped or unmounted, and once the new
code is in place the web server is reloaded.  Anything else gets the full
procedure, as before.  `IVLE_MAINT_FULL_PROCEDURE=1` in the environment
(also through `apt-get`) forces the full procedure.

The file lists: dpkg's preinst is the only time both are known, the
installed package's md5sums (`$DPKG_ADMINDIR/info/PKG.md5sums`) and the
new package's, which dpkg extracts with its control file beside the
preinst it runs (`$DPKG_ADMINDIR/tmp.ci/`).  A source install
(`upgrade --source DIR`) fingerprints DIR's files (the jail only).
Whatever is not known counts as changed.

The decision goes into the upgrade's journal (Journal.needs) the first time
a step asks, in the before-phase; the after-phase and every rerun read it
back, so they agree exactly.  A skipped step is journaled done, with
"skipped: WHY" (skipped()).

A decision holds only for the release it was made from: it records its
basis, a fingerprint of each input (basis()), and every run of the upgrade
passes confirm() before its first step, which computes the basis again.
An input that moved, or that cannot be computed now, and that feeds a need
the decision said no to, replaces the decision by the full procedure and
runs again every step it skipped: a rerun after the administrator changed
the source tree, [jail] or the package, and what dpkg's md5sums leave out
(conffiles, symlinks, modes: known for NEW only once unpacked, so the
postinst proves them) are never skipped on a stale word.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from . import summary
from .cluster.presence import coordinated
from .context import Outcome, UpgradeContext
from .db.migrations import status
from .dpkg import FileList, installed_md5sums, package_version, parse_md5sums
from .dpkg import read_file as _read
from .errors import MaintError
from .gates.environment import yes_or_no
from .jails.template import recorded_inputs

if TYPE_CHECKING:
    from .journal import Journal

ENV_FULL = "IVLE_MAINT_FULL_PROCEDURE"
# A skipped step's metric (its reason), in its journal record; the summary reads it.
SKIPPED = summary.SKIPPED
DEFAULT_PACKAGE = "ivle"


class Kind(StrEnum):
    """What a file of IVLE's is to the procedure (classify)."""

    CODE = "code"            # goes into the jail; the web server and usrmgt run it
    MEDIA = "media"          # static files: the media version
    MIGRATION = "migration"  # userdb/migrations: the migrate step
    DOC = "doc"              # nothing runs it
    WEB = "web"              # Apache's configuration: a reload


_DOC_DIRS = (("usr", "share", "doc"), ("usr", "share", "man"), ("usr", "share", "info"),
             ("usr", "share", "lintian"), ("doc",))


def classify(path: str) -> Kind:
    """PATH's kind: IVLE's static files live in a `media` directory
    (ivle/webapp/*/media), its migrations in userdb/migrations."""
    parts = PurePosixPath(path.lstrip("/").removeprefix("./")).parts
    if ".." in parts or not parts:  # not where its name says (a malformed list): the jail's
        return Kind.CODE
    if any(parts[:len(d)] == d for d in _DOC_DIRS):
        return Kind.DOC
    if parts[-3:-1] == ("userdb", "migrations"):
        return Kind.MIGRATION
    if "media" in parts[:-1]:
        return Kind.MEDIA
    if parts[:2] == ("etc", "apache2"):
        return Kind.WEB
    return Kind.CODE


def changed(old: Mapping[str, str], new: Mapping[str, str], kind: Kind) -> list[str]:
    """The files of KIND added, removed or changed from OLD to NEW, sorted."""
    names = {p for p in (*old, *new) if classify(p) == kind}
    return sorted(p for p in names if old.get(p) != new.get(p))


def digest_of(files: Mapping[str, str], kind: Kind) -> str:
    """One fingerprint of FILES' entries of KIND (names and digests)."""
    h = hashlib.sha256()
    for path in sorted(p for p in files if classify(p) == kind):
        h.update(f"{path}\0{files[path]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def jail_settings_digest(conf: Mapping[str, Any]) -> str:
    """ivle.conf's part of the jail's inputs: [jail], and every [paths] key:
    where ivle-buildjail copies IVLE's code from (lib, share, prefix) and
    where the template and each user's jail are (the [[jails]] keys)."""
    text = json.dumps({"jail": _plain(conf.get("jail") or {}),
                       "paths": _plain(conf.get("paths") or {})}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _plain(section: Mapping[str, Any]) -> dict[str, Any]:
    """A section, its subsections included, as strings (configobj's values)."""
    return {str(k): _plain(v) if isinstance(v, Mapping) else str(v)
            for k, v in section.items()}


# ------------------------------------------------------------------ the file lists


def _admin_dir() -> Path:
    return Path(os.environ.get("DPKG_ADMINDIR") or "/var/lib/dpkg")


def installed_files(package: str) -> FileList | None:
    """The installed package's files, from dpkg's database; None if unknown."""
    return installed_md5sums(package, _admin_dir())


def incoming_file(package: str, version: str, name: str) -> bytes | None:
    """A file of the new package's control archive (md5sums, postinst...),
    while its preinst runs: dpkg has extracted the archive beside the preinst
    (tmp.ci), its control naming the package and the version; else None."""
    if os.environ.get("DPKG_MAINTSCRIPT_NAME") != "preinst":
        return None
    tmp = _admin_dir() / "tmp.ci"
    control = _read(tmp / "control")
    if control is None:
        return None
    fields = dict(line.split(":", 1) for line in control.decode("utf-8", "replace").splitlines()
                  if ":" in line and not line.startswith((" ", "\t")))
    if fields.get("Package", "").strip() != package or \
            fields.get("Version", "").strip() != version:
        return None
    return _read(tmp / name)


def new_postinst(ctx: UpgradeContext) -> bytes | None:
    """The new version's postinst, while dpkg's preinst runs (else None)."""
    return incoming_file(ctx.package or DEFAULT_PACKAGE, ctx.new, "postinst")


def incoming_files(package: str, version: str) -> FileList | None:
    """The new package's files, while its preinst runs (incoming_file)."""
    data = incoming_file(package, version, "md5sums")
    return None if data is None else parse_md5sums(data, str(_admin_dir() / "tmp.ci/md5sums"))


# Not the release: version control, bytecode, and setup.py build's output
# (the top's build/ alone: a package of IVLE's may be named build).
_TREE_SKIP = frozenset({".git", ".bzr", "__pycache__"})
_TREE_TOP_SKIP = frozenset({"build"})


def tree_files(top: Path) -> FileList:
    """A source tree's entries (upgrade --source: root's, checked): a file by
    its content and mode, a symlink (to a directory too) by its target, a
    directory by its mode, so that no change of one goes unseen."""
    files: FileList = {}
    for dirpath, dirnames, filenames in os.walk(top):
        top_level = Path(dirpath) == top
        dirnames[:] = sorted(d for d in dirnames if d not in _TREE_SKIP
                             and not (top_level and d in _TREE_TOP_SKIP))
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            files[path.relative_to(top).as_posix()] = _entry(path, top=top)
    return files


def _entry(path: Path, *, content: bool = True, top: Path | None = None) -> str:
    """One entry as it is on disk: type, mode, a symlink's target (in a tree
    TOP, what it leads to outside the tree too) and (CONTENT) a file's
    sha256.  What cannot be read counts as changed (a new token)."""
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            return "link:" + os.readlink(path) + ("" if top is None else _beyond(path, top))
        mode = f"{stat.S_IMODE(st.st_mode):o}"
        if stat.S_ISDIR(st.st_mode):
            return f"dir:{mode}"
        if not stat.S_ISREG(st.st_mode):
            return f"type:{stat.S_IFMT(st.st_mode):o}:{mode}"
        if not content:
            return f"file:{mode}"
        return f"{hashlib.sha256(_read_regular(path)).hexdigest()}:{mode}"
    except FileNotFoundError:
        return "absent"
    except (OSError, MaintError):
        return "unreadable:" + os.urandom(8).hex()  # never proves itself unchanged


def _beyond(link: Path, top: Path) -> str:
    """What a tree's symlink leads to outside the tree, where the walk does
    not go (setup.py install copies it all the same): a file by its content;
    a directory is not walked, so it never proves itself unchanged."""
    real = Path(os.path.realpath(link))
    if real.is_relative_to(os.path.realpath(top)):
        return ""  # the walk sees it
    try:
        st = real.stat()
    except FileNotFoundError:
        return " dangling"
    if stat.S_ISREG(st.st_mode):
        return f" {hashlib.sha256(_read_regular(real)).hexdigest()}:{stat.S_IMODE(st.st_mode):o}"
    return " unwalked:" + os.urandom(8).hex()


def _read_regular(path: Path) -> bytes:
    """A regular file's bytes, never through a symlink nor blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


def _lines(data: bytes | None) -> list[str]:
    return [line for line in (data or b"").decode("utf-8", "surrogateescape").split("\n")
            if line.strip()]


def package_entries(package: str) -> FileList:
    """What dpkg's md5sums leave out of the installed PACKAGE, as it is on
    disk: each path of its list (info/PKG.list) by type and mode, a symlink
    by its target, a conffile (info/PKG.conffiles) by its content too.
    Before the unpack these are OLD's, after it NEW's."""
    info = _admin_dir() / "info"
    listed = _read(info / f"{package}.list")
    if listed is None:
        return {}
    conffiles = {line.removeprefix("remove-on-upgrade ").strip()
                 for line in _lines(_read(info / f"{package}.conffiles"))}
    root = os.environ.get("DPKG_ROOT", "")
    return {path: _entry(Path(root + path), content=path in conffiles)
            for path in _lines(listed)}


@dataclass(frozen=True)
class Release:
    """OLD's and NEW's files as far as they are known, and from where."""

    old: FileList | None
    new: FileList | None
    where: str


def release_files(ctx: UpgradeContext, *, planning: bool = False) -> Release:
    """The file lists of the upgrade.  PLANNING (`ivle-maint plan`, no
    preinst): a reinstall of the installed version is taken to bring the
    files it has (said in the reasons)."""
    if ctx.source is not None:
        return Release(None, tree_files(ctx.source), f"source tree {ctx.source}")
    package = ctx.package or DEFAULT_PACKAGE
    old = installed_files(package)
    new = incoming_files(package, ctx.new)
    if new is not None:
        return Release(old, new, f"dpkg's lists of {package} {ctx.old} and {ctx.new}")
    if planning and ctx.old == ctx.new and old is not None:
        try:
            same = package_version(package) == ctx.new
        except MaintError:
            same = False
        if same:
            return Release(old, old, f"a reinstall of {package} {ctx.new}, taken to bring "
                           "the files installed now")
    return Release(old, None, f"{ctx.new}'s files are not known before it is unpacked "
                   "(dpkg's preinst knows them)")


# ------------------------------------------------------------------- the decision

OUTAGE, MIGRATIONS, JAIL, MEDIA, USRMGT = "outage", "migrations", "jail", "media", "usrmgt"


@dataclass(frozen=True)
class Needs:
    """What the release needs; `why` says why, or why not, for each."""

    migrations: bool = True
    jail: bool = True
    media: bool = True
    usrmgt: bool = True
    outage: bool = True
    why: dict[str, str] = field(default_factory=dict)
    # The jail's inputs, recorded once a rebuild from them is checked.
    jail_inputs: dict[str, str] = field(default_factory=dict)
    # What the decision took for granted (plan's guess for a reinstall), said with it.
    assumed: str = ""
    # A fingerprint of each input it was decided from (basis(), confirm()).
    basis: dict[str, str] = field(default_factory=dict)

    @classmethod
    def full(cls, why: str) -> Needs:
        return cls(why={key: why for key in (OUTAGE, MIGRATIONS, JAIL, MEDIA, USRMGT)})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Needs:
        """The decision a journal recorded (Journal.needs, its one reader).
        A record of another shape (another version's, or a damaged file's:
        a field of another type, a name unknown) gets the safe answer, the
        full procedure: a `basis` that is no mapping made every rerun a
        traceback, a `migrations` of 0 skipped the migrations."""
        if not _of_this_shape(data):
            return cls.full("the journal's record of the decision is not this version's")
        return cls(**data)

    def _said(self, text: str) -> str:
        return f"{text}; assuming {self.assumed}" if self.assumed else text

    def reason(self, key: str) -> str:
        return self._said(self.why.get(key, ""))

    def said_no(self) -> set[str]:
        """The needs this decision says no to: the steps it lets skip."""
        return {key for key in (OUTAGE, MIGRATIONS, JAIL, MEDIA, USRMGT)
                if not getattr(self, key)}

    @property
    def stays_up(self) -> str:
        """Why the site is not taken down ("" when it is)."""
        if self.outage:
            return ""
        return self._said(f"the site stays up ({self.why.get(MIGRATIONS, '')}; "
                          f"{self.why.get(JAIL, '')})")


def _of_this_shape(data: object) -> bool:
    """Is DATA a Needs as to_json() writes it (each field of its type, any left out)?"""
    if not isinstance(data, Mapping):
        return False
    kinds = {f.name: str(f.type) for f in fields(Needs)}
    for key, value in data.items():
        kind = kinds.get(key)
        if kind is None:
            return False
        if kind == "bool" and not isinstance(value, bool):
            return False
        if kind == "str" and not isinstance(value, str):
            return False
        if kind.startswith("dict") and not (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            return False
    return True


def _forced() -> bool:
    return bool(yes_or_no(os.environ, ENV_FULL))


def _migrations(ctx: UpgradeContext, files: Release) -> tuple[bool, str]:
    if files.old is not None and files.new is not None:
        new = changed(files.old, files.new, Kind.MIGRATION)
        if new:
            return True, f"{len(new)} migration files new or changed ({new[0]}...)"
    elif not (ctx.settings.role.runs_database and ctx.source is not None):
        return True, "the migrations OLD shipped are not known"
    if ctx.settings.role.runs_database:
        try:
            found = status(ctx.settings, migrations_dir=ctx.preflight_migrations)
        except MaintError as exc:
            return True, f"the database cannot say what is pending ({exc})"
        if found.unmarked and files.old is None:
            return True, "no migration marker yet"
        if found.marker and (found.pending or found.changed):
            keys = [m.key for m in found.pending] or [c.key for c in found.changed]
            return True, f"{len(keys)} migrations pending or changed ({keys[0]}...)"
    return False, "no migrations"


def _jail(ctx: UpgradeContext, files: Release) -> tuple[bool, str, dict[str, str]]:
    assert files.new is not None
    inputs = {"files": digest_of(files.new, Kind.CODE),
              "settings": jail_settings_digest(ctx.ivle_conf.conf), "from": files.where}
    if ctx.settings.role.runs_database:
        recorded = recorded_inputs(ctx.settings)
        if recorded is None:
            return True, "no record of the inputs of the last jail rebuild", inputs
        if not ctx.ivle_conf.jail_template.is_dir():
            return True, f"no jail template at {ctx.ivle_conf.jail_template}", inputs
        if recorded.get("settings") != inputs["settings"]:
            return True, "ivle.conf's jail settings changed since the last rebuild", inputs
        if recorded.get("files") != inputs["files"]:
            some = changed(files.old, files.new, Kind.CODE)[:1] if files.old else []
            return True, "IVLE's files in the jail changed since the last rebuild" + \
                (f" ({some[0]}...)" if some else ""), inputs
        return False, "the jail's inputs are those of the last rebuild", inputs
    if files.old is None:
        return True, "the installed files are not known", inputs
    code = changed(files.old, files.new, Kind.CODE)
    if code:
        return True, f"{len(code)} of IVLE's files in the jail change ({code[0]}...)", inputs
    return False, "no IVLE file in the jail changes", inputs


def _media(ctx: UpgradeContext, files: Release) -> tuple[bool, str]:
    if ctx.old != ctx.new:
        return True, f"the version changes ({ctx.old} -> {ctx.new})"
    if files.old is None or files.new is None:
        return True, "the installed static files are not known"
    media = changed(files.old, files.new, Kind.MEDIA)
    if media:
        return True, f"{len(media)} static files change ({media[0]}...)"
    return False, "neither the version nor a static file changes"


def _usrmgt(files: Release) -> tuple[bool, str]:
    if files.old is None or files.new is None:
        return True, "the installed files are not known"
    code = changed(files.old, files.new, Kind.CODE)
    return (True, f"its code changes ({code[0]}...)") if code else \
        (False, "its code does not change")


def decide(ctx: UpgradeContext, *, planning: bool = False) -> Needs:
    """What the release needs; anything not known counts as needed."""
    needs = _decide(ctx, planning)
    if ctx.rollback is not None:  # the point's state comes back whole: nothing is skipped
        return replace(Needs.full("a rollback to a restore point"), jail_inputs=needs.jail_inputs)
    if _forced():  # the jail's inputs are kept: the rebuild records them
        return replace(Needs.full(f"{ENV_FULL} is set"), jail_inputs=needs.jail_inputs)
    return needs


def _decide(ctx: UpgradeContext, planning: bool) -> Needs:
    if ctx.code_is_new:
        return Needs.full("decided only while the old code is in place, and it no longer is")
    files = release_files(ctx, planning=planning)
    if files.new is None:
        return Needs.full(files.where)
    migrations, why_migrations = _migrations(ctx, files)
    jail, why_jail, inputs = _jail(ctx, files)
    media, why_media = _media(ctx, files)
    usrmgt, why_usrmgt = _usrmgt(files)
    outage, why_outage = migrations or jail, "migrations or a jail rebuild"
    if coordinated(ctx.settings) and not outage:
        # A slave cannot see the master's record of its jail: the cluster
        # keeps IVLE's procedure.
        outage, why_outage = True, "a coordinated cluster keeps the full procedure"
    why = {OUTAGE: why_outage, MIGRATIONS: why_migrations, JAIL: why_jail,
           MEDIA: why_media, USRMGT: why_usrmgt}
    assumed = files.where if files.new is files.old else ""  # plan's guess for a reinstall
    # The site stays up on the database's word too: a rerun asks it again.
    database = not outage and ctx.settings.role.runs_database
    return Needs(migrations, jail, media, usrmgt, outage, why, inputs, assumed,
                 basis(ctx, files, database=database))


def built_inputs(ctx: UpgradeContext) -> dict[str, str]:
    """The inputs a rebuild running now is built from, to record: the
    decision's may be stale (a rerun after the administrator edited [jail]
    or the source tree), and a record must vouch only for what was built."""
    inputs = dict(of(ctx).jail_inputs)
    if not inputs:
        return inputs
    inputs["settings"] = jail_settings_digest(ctx.ivle_conf.conf)
    # ivle-buildjail copies the code installed.  dpkg's record says what was
    # unpacked; a source tree changed since the decision may or may not be
    # what is installed (upgrade --source installs it again, `ivle-maint
    # rerun` does not).  Either way, a release other than the decision's, or
    # one not known: no record, and the next upgrade rebuilds.
    now = _release_now(ctx).new
    if now is None or digest_of(now, Kind.CODE) != inputs.get("files"):
        return {}
    return inputs


# ------------------------------------------------------------- the decision's basis

NEW_FILES, OLD_FILES, SETTINGS, MIGRATIONS_DIR, DATABASE = "new files", "old files", \
    "settings", "migrations directory", "database"
# What each input of the basis feeds: a moved input makes a decision stale
# when it fed a need the decision said no to.
_EVERYTHING = (OUTAGE, MIGRATIONS, JAIL, MEDIA, USRMGT)
_FEEDS: dict[str, tuple[str, ...]] = {
    NEW_FILES: _EVERYTHING, OLD_FILES: _EVERYTHING, SETTINGS: (OUTAGE, JAIL),
    MIGRATIONS_DIR: (OUTAGE, MIGRATIONS), DATABASE: (OUTAGE, MIGRATIONS),
    f"on disk: {Kind.CODE}": (OUTAGE, JAIL, USRMGT), f"on disk: {Kind.MEDIA}": (MEDIA,),
    f"on disk: {Kind.MIGRATION}": (OUTAGE, MIGRATIONS)}


def _whole_digest(files: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def basis(ctx: UpgradeContext, files: Release, *, database: bool = False) -> dict[str, str]:
    """A fingerprint of each input of the decision, for the release FILES
    describes: the file lists, ivle.conf's jail settings, a --migrations
    directory outside the source tree, for a package what its md5sums
    leave out, per kind (package_entries: OLD's before the unpack, NEW's
    after; equal when the release changes none of them), and (DATABASE)
    what the database's marker says of the new migrations."""
    found = {SETTINGS: jail_settings_digest(ctx.ivle_conf.conf)}
    if database:
        found[DATABASE] = _database_state(ctx)
    if files.new is not None:
        found[NEW_FILES] = _whole_digest(files.new)
    if files.old is not None:
        found[OLD_FILES] = _whole_digest(files.old)
    if ctx.source is not None:
        where = ctx.migrations_dir
        if where is not None and not where.is_relative_to(ctx.source):
            found[MIGRATIONS_DIR] = _whole_digest(tree_files(where)) if where.is_dir() \
                else _entry(where)
    else:
        # A directory is of the kind of what it holds (a new media/ is static).
        on_disk = {f"{path}/-" if entry.startswith("dir:") else path: entry
                   for path, entry in package_entries(ctx.package or DEFAULT_PACKAGE).items()}
        for kind in (Kind.CODE, Kind.MEDIA, Kind.MIGRATION):
            found[f"on disk: {kind}"] = digest_of(on_disk, kind)
    return found


def _database_state(ctx: UpgradeContext) -> str:
    """The migrations the database's marker lacks or holds changed, of the
    new ones (a database restored from an older dump since lacks some).  An
    unmarked database lacks none beyond what the baseline records: its
    decision came from the file lists."""
    try:
        found = status(ctx.settings, migrations_dir=ctx.preflight_migrations)
    except MaintError:
        return "unknown:" + os.urandom(8).hex()  # never proves itself unchanged
    if found.unmarked:
        return "[]"
    return json.dumps(sorted({m.key for m in found.pending} | {c.key for c in found.changed}))


def _release_now(ctx: UpgradeContext) -> Release:
    """The release as this run sees it: the tree, or dpkg's lists (before
    the unpack the incoming one as NEW's, after it the installed one)."""
    if ctx.source is not None:
        return Release(None, tree_files(ctx.source), f"source tree {ctx.source}")
    package = ctx.package or DEFAULT_PACKAGE
    if ctx.code_is_new:
        return Release(None, installed_files(package), f"dpkg's list of {package}")
    return Release(installed_files(package), incoming_files(package, ctx.new),
                   f"dpkg's lists of {package}")


def moved_inputs(ctx: UpgradeContext, needs: Needs) -> list[str]:
    """The inputs of NEEDS that moved since it was decided, or cannot be
    computed now, and that fed a need it said no to."""
    said_no = needs.said_no()
    if not said_no:
        return []  # the full procedure: nothing to prove
    now = basis(ctx, _release_now(ctx), database=DATABASE in needs.basis)
    if ctx.code_is_new:  # OLD's files are gone; OLD's version names the journal
        now.pop(OLD_FILES, None)
        recorded = {k: v for k, v in needs.basis.items() if k != OLD_FILES}
    else:
        recorded = needs.basis
    if not recorded:
        return ["the decision recorded no basis"]
    return sorted(key for key in recorded.keys() | now.keys()
                  if recorded.get(key) != now.get(key)
                  and said_no & set(_FEEDS.get(key, _EVERYTHING)))


def confirm(ctx: UpgradeContext, journal: Journal) -> None:
    """The gate of a recorded decision, before a run's first step: if an
    input it skipped steps for moved (moved_inputs), the full procedure
    replaces it and every step it skipped runs again."""
    if journal.needs is None:
        return
    moved = moved_inputs(ctx, Needs.from_json(journal.needs))
    if not moved:
        return
    why = f"the release's inputs changed since the decision ({', '.join(moved)})"
    redo = sorted(name for name, record in journal.steps.items() if SKIPPED in record.metrics)
    ctx.reporter.warn(f"{why}: IVLE's whole procedure" +
                      (f"; doing again: {', '.join(redo)}" if redo else ""))
    journal.forget(redo)
    # No jail inputs: a rebuild records none it cannot vouch for (the next
    # release rebuilds the jail).
    journal.needs = Needs.full(why).to_json()
    journal.save()


# What `plan` decided, per context: every step asks; the database once.
_PLANNED: dict[int, tuple[UpgradeContext, Needs]] = {}


def of(ctx: UpgradeContext) -> Needs:
    """This upgrade's decision: the journal's, else made now and recorded
    there (the after-phase never makes one: it gets the full procedure).
    Without a journal (`ivle-maint plan`) it is made and not recorded."""
    journal = ctx.journal
    if journal is None:
        kept = _PLANNED.get(id(ctx))
        if kept is None or kept[0] is not ctx:
            kept = ctx, decide(ctx, planning=True)
            _PLANNED.clear()
            _PLANNED[id(ctx)] = kept
        return kept[1]
    if journal.needs is not None:
        return Needs.from_json(journal.needs)
    needs = decide(ctx)
    journal.needs = needs.to_json()
    # A new journal is written with its first step (upgrade.py): a preflight
    # check that asks for the decision and then refuses leaves no journal.
    if journal.path.exists():
        journal.save()
    return needs


# ------------------------------------------------------------- what a step says


def skipped(why: str) -> Outcome:
    """A skipped step's outcome: journaled done, its reason kept."""
    return Outcome(f"skipped: {why}", {SKIPPED: why})


def was_skipped(ctx: UpgradeContext, step: str) -> bool:
    """Did this upgrade skip STEP (its journal record says so)?"""
    record = ctx.journal.steps.get(step) if ctx.journal is not None else None
    return record is not None and SKIPPED in record.metrics


def plan_lines(step: str, why: str) -> list[str]:
    """The plan's line for a step that will be skipped (none otherwise)."""
    return [f"skip {step}: {why}"] if why else []

"""The installed IVLE package, kept on the node as a .deb: a rollback
needs no repository (which may have dropped the old version).

keep_installed() runs in the preinst of an upgrade: the old code is still
installed, dpkg holds its lock, so only dpkg-query and the files of dpkg's
database are read; dpkg itself never runs.  It leaves
DEST/PACKAGE_VERSION_ARCH.deb (VERSION's ':' as apt writes it, %3a):

1. from apt's cache, when a .deb there has the installed Package, Version
   and Architecture and every file in it is what dpkg installed (its
   md5sums list; a conffile: the digest dpkg recorded for it).  Hard-linked
   into DEST on the same filesystem, else copied;
2. else rebuilt from the installed files by dpkg-repack.  dpkg-repack
   refuses a package that is not "installed", and in a preinst it is
   half-installed (dpkg marks it so before running the new preinst), so it
   runs on a shadow root in a private directory under DEST: the package's
   files (hard links, or copies across filesystems) and a database holding
   only the package's status, marked installed.  Conffiles go in as they
   are on disk (KeptPackage.rebuilt; dpkg-repack notes it in the
   Description, which is how a kept file is known again as rebuilt); every
   other file must still be what dpkg installed.

Either way the file is checked before it is renamed into place, its
sha256 is recorded, and nothing half-written is left in DEST: temporary
files are removed on any failure, Ctrl-C included (a run killed outright
leaves them for prune()).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .. import system
from ..dpkg import FileList, installed_md5sums
from ..errors import MaintError
from ..gates import trusted
from ..gates.rewrite import fsync_dir, replace_file
from ..output import Reporter

if TYPE_CHECKING:
    from debian.debfile import DebFile

APT_CACHE = Path("/var/cache/apt/archives")
# A .deb read to be kept: root's, bounded (IVLE's is a few MB).
PACKAGE_FILE = trusted.Purpose("package file", 4096 * trusted.MiB, MaintError)
# Everything keep_installed writes in DEST before the final rename starts
# with this, or is replace_file's ".NAME.TOKEN.tmp": prune() removes both.
TEMP_PREFIX = ".ivle-maint-keep-"
REPACK_TIMEOUT = 1800.0  # seconds; dpkg-repack copies the files and compresses them
# dpkg-repack's --tag=description line: a kept file is known again as rebuilt.
REPACK_MARK = "by dpkg-repack.)"
# dpkg's states in which the installed files are those of the installed version.
_FILES_IN_PLACE = {"installed", "unpacked", "half-configured", "triggers-awaited",
                   "triggers-pending"}
# A line of the Conffiles field: PATH DIGEST [obsolete] [remove-on-upgrade]
# (PATH may hold spaces; DIGEST is "newconffile" before the first configure).
_CONFFILE = re.compile(r"(/.*) ([0-9a-f]{32}|newconffile)((?: obsolete| remove-on-upgrade)*)")
_DIVERTED = re.compile(r"^(?:locally diverted to|diverted by .* to): (.*)$")


class NotInstalled(MaintError):
    """dpkg has no such package: a source install, nothing to keep."""


@dataclass(frozen=True)
class KeptPackage:
    """A kept .deb, as a restore point's manifest records it."""

    package: str
    version: str
    architecture: str
    path: Path
    sha256: str
    # Rebuilt by dpkg-repack: its conffiles are the node's, as modified on
    # disk, not those the package shipped.
    rebuilt: bool

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeptPackage:
        texts = ("package", "version", "architecture", "path", "sha256")
        if not isinstance(data, Mapping) or \
                any(not isinstance(data.get(k), str) or not data[k] for k in texts) or \
                not isinstance(data.get("rebuilt"), bool):
            raise MaintError("the restore point's record of the kept package is damaged; "
                             "take a new restore point")
        return cls(data["package"], data["version"], data["architecture"], Path(data["path"]),
                   data["sha256"], data["rebuilt"])


@dataclass(frozen=True)
class _Installed:
    """dpkg's record of the installed package."""

    package: str
    version: str
    architecture: str
    stanza: str  # dpkg-query -s, whole
    conffiles: dict[str, str]  # path (no leading /) -> digest dpkg recorded
    md5sums: FileList | None

    @property
    def name(self) -> str:
        return f"{self.package} {self.version}"


def deb_name(package: str, version: str, architecture: str) -> str:
    """PACKAGE_VERSION_ARCH.deb, the epoch's ':' written as apt does (%3a)."""
    return f"{package}_{version.replace(':', '%3a')}_{architecture}.deb"


def keep_installed(package: str, dest: Path, reporter: Reporter, *,
                   admindir: Path | None = None, root: Path | None = None,
                   cache: Path = APT_CACHE) -> KeptPackage:
    """The installed PACKAGE as DEST/PACKAGE_VERSION_ARCH.deb, checked (see
    the module docstring).  ROOT: where the package is installed (default
    $DPKG_ROOT, else /); ADMINDIR: dpkg's database (default $DPKG_ADMINDIR,
    else ROOT/var/lib/dpkg).  Kept already and still valid: returned as is."""
    root = root or Path(os.environ.get("DPKG_ROOT") or "/")
    admindir = admindir or Path(os.environ.get("DPKG_ADMINDIR") or root / "var/lib/dpkg")
    inst = _installed(package, admindir)
    try:
        return _keep(inst, dest, reporter, root=root, admindir=admindir, cache=cache)
    except OSError as exc:  # a full or read-only disk: one line, never a traceback
        where = exc.filename or dest
        raise MaintError(f"cannot keep {inst.name} in {dest} for a rollback: {where}: "
                         f"{exc.strerror or exc}; fix that and run again") from None


def _keep(inst: _Installed, dest: Path, reporter: Reporter, *, root: Path, admindir: Path,
          cache: Path) -> KeptPackage:
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = dest / deb_name(inst.package, inst.version, inst.architecture)
    if os.path.lexists(target):
        found = _checked(target, inst, rebuilt=None)
        if isinstance(found, KeptPackage):
            reporter.info(f"{inst.name} is kept already: {target}")
            return found
        reporter.warn(f"{target}: {found}; kept again")
        target.unlink()
    kept = _from_cache(inst, cache, target, reporter) if inst.md5sums is not None else None
    if kept is None:
        kept = _rebuild(inst, target, reporter, root=root, admindir=admindir, cache=cache)
    fsync_dir(dest)
    return kept


def verify(kept: KeptPackage) -> None:
    """KEPT is still what was kept: one line naming the fault otherwise."""
    redo = "take a new restore point before relying on it"
    try:
        digest = _sha256(kept.path)
    except FileNotFoundError:
        raise MaintError(f"{kept.path}: the kept package {kept.package} {kept.version} is "
                         f"missing; {redo}") from None
    except OSError as exc:
        raise MaintError(f"{kept.path}: cannot read the kept package ({exc.strerror}); "
                         f"{redo}") from None
    if digest != kept.sha256:
        raise MaintError(f"{kept.path}: the kept package changed since it was kept (sha256 "
                         f"{digest[:12]}..., recorded {kept.sha256[:12]}...); {redo}")
    fields = _control(kept.path)
    said = (fields.get("Package"), fields.get("Version"), fields.get("Architecture"))
    if said != (kept.package, kept.version, kept.architecture):
        what = f"its control says {' '.join(map(str, said))}" if fields else \
            "it is no readable package"
        raise MaintError(f"{kept.path}: {what}, not {kept.package} {kept.version} "
                         f"{kept.architecture}; {redo}")


def prune(dest: Path, keep: set[Path]) -> list[Path]:
    """Remove the kept packages in DEST not in KEEP (a restore point was
    committed), and what a killed run left there; the paths removed."""
    wanted = {os.path.abspath(p) for p in keep}
    removed = []
    try:
        entries = sorted(os.scandir(dest), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        path = dest / entry.name
        temporary = entry.name.startswith(TEMP_PREFIX) or \
            (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        if temporary and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path)
        elif temporary or (entry.name.endswith(".deb") and os.path.abspath(path) not in wanted
                           and not entry.is_dir(follow_symlinks=False)):
            path.unlink()
        else:
            continue
        removed.append(path)
    if removed:
        fsync_dir(dest)
    return removed


# ----------------------------------------------------------------- dpkg's record


def _installed(package: str, admindir: Path) -> _Installed:
    done = system.run(["dpkg-query", f"--admindir={admindir}", "-s", package],
                      keep_stdout=True)
    stanzas = [s for s in done.stdout.split("\n\n") if s.strip()] if done.ok else []
    if not stanzas:
        raise NotInstalled(f"cannot keep the installed {package} for a rollback: dpkg does "
                           "not know it")
    if len(stanzas) != 1:
        raise MaintError(f"cannot keep the installed {package} for a rollback: "
                         f"{len(stanzas)} instances; name one as {package}:ARCH")
    fields = _fields(stanzas[0])
    name = f"{fields.get('Package', package)} {fields.get('Version', '')}"
    state = fields.get("Status", "").split()
    if not state or (state[-1] not in _FILES_IN_PLACE and
                     not _in_own_preinst(fields.get("Package", package), state, admindir)):
        if "Config-Version" not in fields and os.environ.get("DPKG_MAINTSCRIPT_NAME"):
            raise MaintError(f"cannot keep {name} for a rollback: no version of it was "
                             "installed before (a first install has nothing to roll back to)")
        raise MaintError(f"cannot keep {name} for a rollback: dpkg says it is "
                         f"{state[-1] if state else 'in no state'}; reinstall it first "
                         f"(apt-get install --reinstall {package})")
    conffiles = {}
    for line in fields.get("Conffiles", "").splitlines():
        shipped = _CONFFILE.fullmatch(line)
        if shipped and not shipped.group(3):  # obsolete, remove-on-upgrade: not shipped
            conffiles[shipped.group(1).lstrip("/")] = shipped.group(2)
    arch = fields.get("Architecture", "")
    multi = arch if fields.get("Multi-Arch") == "same" else None
    return _Installed(fields.get("Package", package), fields.get("Version", ""), arch,
                      stanzas[0], conffiles,
                      installed_md5sums(fields.get("Package", package), admindir, multi))


def _in_own_preinst(package: str, state: list[str], admindir: Path) -> bool:
    """dpkg runs a new version's preinst with the package half-installed: on
    an upgrade its files are still the old version's (nothing is unpacked
    yet) and dpkg lists them; on a first install it lists none (and the
    stanza already has the new Version)."""
    info = admindir / "info"
    listed = (info / f"{package}.list").is_file() or any(info.glob(f"{package}:*.list"))
    return state[-1] == "half-installed" and listed and \
        os.environ.get("DPKG_MAINTSCRIPT_NAME") == "preinst" and \
        os.environ.get("DPKG_MAINTSCRIPT_PACKAGE") == package


def _fields(stanza: str) -> dict[str, str]:
    """A control stanza's fields; a continuation line joins its field's value."""
    fields: dict[str, str] = {}
    last = ""
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and last:
            fields[last] += "\n" + line.lstrip()
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


# ------------------------------------------------------------- checking a .deb


def preload() -> type[DebFile]:
    """python3-debian's DebFile, loaded when a .deb is read, not with this
    module (it loads chardet: `plan` reads no .deb and never pays for it).
    An upgrade calls this before its first step (upgrade.preload)."""
    from debian.debfile import DebFile  # deferred on purpose, see above

    return DebFile


def _control(path: Path) -> dict[str, str]:
    """A .deb's control fields ({} when it is no readable .deb)."""
    try:
        with preload()(filename=str(path)) as deb:
            return {k: str(v) for k, v in deb.debcontrol().items()}
    except Exception:  # any damage (ar, tar, compression) means: not that package
        return {}


def _mismatch(path: Path, inst: _Installed, *, rebuilt: bool) -> str:
    """Why the .deb at PATH is not INST ("" when it is).  Every file in it is
    what dpkg installed; a conffile, when not REBUILT, what dpkg recorded
    for it (rebuilt: as modified on disk, any content)."""
    expected = dict(inst.md5sums or {})
    for conffile, digest in inst.conffiles.items():
        if rebuilt:
            expected.pop(conffile, None)
        else:
            expected[conffile] = digest
    try:
        with preload()(filename=str(path)) as deb:
            fields = deb.debcontrol()
            said = (fields.get("Package"), fields.get("Version"), fields.get("Architecture"))
            if said != (inst.package, inst.version, inst.architecture):
                return f"it is {' '.join(map(str, said))}"
            if (REPACK_MARK in fields.get("Description", "")) != rebuilt:
                return "rebuilt by dpkg-repack" if not rebuilt else "not dpkg-repack's"
            seen = set()
            tar = deb.data.tgz()
            for member in tar:
                name = os.path.normpath(member.name.removeprefix("./")).lstrip("/")
                if not (member.isreg() or member.islnk()):
                    continue
                seen.add(name)
                if rebuilt and name in inst.conffiles:
                    continue
                if inst.md5sums is None and rebuilt:
                    continue  # nothing to compare with (said when rebuilt)
                want = expected.get(name)
                if want is None:
                    return f"{name} is not among the installed files"
                stream = tar.extractfile(member)
                if stream is None or _md5(stream) != want:
                    return f"{name} differs from the installed one"
    except Exception as exc:  # any damage (ar, tar, compression): not that package
        return f"not a readable package ({type(exc).__name__})"
    missing = sorted(set(expected) - seen)
    return f"{missing[0]} is missing from it" if missing else ""


def _checked(path: Path, inst: _Installed, *, rebuilt: bool | None) -> KeptPackage | str:
    """PATH as INST's KeptPackage, or why it is not.  REBUILT None: as its
    control says (a file kept before)."""
    if rebuilt is None:
        rebuilt = REPACK_MARK in _control(path).get("Description", "")
    why = _mismatch(path, inst, rebuilt=rebuilt)
    if why:
        return why
    return KeptPackage(inst.package, inst.version, inst.architecture, path, _sha256(path),
                       rebuilt)


def _md5(stream: IO[bytes]) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # dpkg's md5sums: a record, not a defence
    while chunk := stream.read(trusted.MiB):
        digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


# ------------------------------------------------------------------ apt's cache


def _from_cache(inst: _Installed, cache: Path, target: Path,
                reporter: Reporter) -> KeptPackage | None:
    """The installed package from apt's CACHE, kept as TARGET; None if none is."""
    candidates = sorted(cache.glob(f"{_glob_escape(inst.package)}_*.deb"),
                        key=lambda p: p.name != target.name)  # apt's own name first
    for candidate in candidates:
        if _control(candidate).get("Version") != inst.version:
            continue
        try:
            kept = _link_or_copy(candidate, target, inst)
        except MaintError as exc:
            reporter.warn(f"{candidate}: not used ({exc})")
            continue
        if isinstance(kept, KeptPackage):
            reporter.info(f"kept {inst.name} from apt's cache: {target}")
            return kept
        reporter.warn(f"{candidate}: not what dpkg installed ({kept}); not used")
    return None


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _link_or_copy(source: Path, target: Path, inst: _Installed) -> KeptPackage | str:
    """SOURCE as TARGET when it is INST, else why not (TARGET not made).
    A hard link on one filesystem, else an atomic copy."""
    fd = trusted.open_checked(source, PACKAGE_FILE)
    try:
        checked = os.fstat(fd)
        tmp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}.deb"
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise MaintError(f"cannot link it into {target.parent}: "
                                 f"{exc.strerror}") from None
            return _copy(fd, source, target, inst)
        try:
            linked = os.lstat(tmp)
            if (linked.st_dev, linked.st_ino) != (checked.st_dev, checked.st_ino):
                return "replaced while it was read"
            kept = _checked(tmp, inst, rebuilt=False)
            if isinstance(kept, KeptPackage):
                os.replace(tmp, target)
                return replace(kept, path=target)
            return kept
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
    finally:
        os.close(fd)


def _copy(fd: int, source: Path, target: Path, inst: _Installed) -> KeptPackage | str:
    """The checked descriptor FD's file copied to TARGET (replace_file: a
    temporary file, flushed, renamed), once it is checked to be INST."""
    why = _mismatch(source, inst, rebuilt=False)
    if why:
        return why
    want = _sha256(source)
    replace_file(target, _chunks(fd, source, want), mode=0o644, purpose=PACKAGE_FILE)
    return KeptPackage(inst.package, inst.version, inst.architecture, target, want, False)


def _chunks(fd: int, source: Path, want: str) -> Iterator[bytes]:
    """FD's bytes from its start; the copy fails unless they are the ones
    checked (sha256 WANT)."""
    os.lseek(fd, 0, os.SEEK_SET)
    digest = hashlib.sha256()
    for chunk in trusted.chunks(fd, PACKAGE_FILE, source):
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != want:
        raise MaintError(f"{source}: changed while it was copied")


# ------------------------------------------------------------------- dpkg-repack


def _rebuild(inst: _Installed, target: Path, reporter: Reporter, *, root: Path,
             admindir: Path, cache: Path) -> KeptPackage:
    """INST rebuilt from its installed files by dpkg-repack, kept as TARGET."""
    reporter.info(f"rebuilding {inst.name} from its installed files (dpkg-repack; no "
                  "matching .deb in apt's cache)")
    if inst.md5sums is None:
        reporter.warn(f"dpkg has no md5sums for {inst.name}: its rebuilt files are not "
                      "checked against them")
    work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=target.parent))
    try:
        try:
            shadow = _shadow_root(inst, root, admindir, work / "root")
            (work / "out").mkdir()
        except OSError as exc:
            raise MaintError(f"cannot gather {inst.name}'s installed files in {work}: "
                             f"{exc.filename}: {exc.strerror}; make room there (or fix "
                             "the file) and run again") from None
        done = system.run(["dpkg-repack", f"--root={shadow}", "--tag=description",
                           inst.package], cwd=str(work / "out"), timeout=REPACK_TIMEOUT)
        built = sorted((work / "out").glob("*.deb"))
        if not done.ok or len(built) != 1:
            errors = [line for line in done.tail if "error" in line] or [*done.tail[-1:]]
            said = errors[0] if errors else f"exit status {done.exit_code}, no output"
            raise MaintError(f"dpkg-repack could not rebuild {inst.name} ({said}); put its "
                             f".deb in {cache} (there: apt-get download {inst.package}="
                             f"{inst.version}) and run again")
        kept = _checked(built[0], inst, rebuilt=True)
        if isinstance(kept, str):
            raise MaintError(f"cannot keep {inst.name}: {kept} (see dpkg --verify "
                             f"{inst.package}); reinstall it, or put its .deb in "
                             f"{cache}, and run again")
        with open(built[0], "rb") as stream:
            os.fsync(stream.fileno())
        os.chmod(built[0], 0o644)
        os.replace(built[0], target)  # same filesystem: WORK is in DEST
    finally:
        _remove_tree(work)
    reporter.info(f"kept {inst.name}, rebuilt with its conffiles as they are on this node: "
                  f"{target}")
    return replace(kept, path=target)


def _remove_tree(work: Path) -> None:
    """WORK gone; retried for a moment: a dpkg-repack just killed (Ctrl-C)
    may still be finishing a write there."""
    for _attempt in range(40):
        shutil.rmtree(work, ignore_errors=True)
        if not os.path.lexists(work):
            return
        time.sleep(0.05)


def _shadow_root(inst: _Installed, root: Path, admindir: Path, shadow: Path) -> Path:
    """A root for dpkg-repack --root: INST's files (hard links, or copies)
    and a database of INST alone, marked installed."""
    db = shadow / "var/lib/dpkg"
    for sub in ("info", "updates", "triggers"):
        (db / sub).mkdir(parents=True)
    replace_file(db / "status", _as_installed(inst.stanza).encode(), mode=0o644)
    info = admindir / "info"
    own = re.compile(rf"{re.escape(inst.package)}(?::{re.escape(inst.architecture)})?\.[^.]+")
    for entry in os.scandir(info):
        if entry.name == "format" or own.fullmatch(entry.name):
            _copy_file(info / entry.name, db / "info" / entry.name)
    listed = _listed_files(inst.package, admindir)
    for i, (path, actual) in enumerate(listed):
        has_children = i + 1 < len(listed) and listed[i + 1][0].startswith(path + "/")
        _mirror(root / actual.lstrip("/"), shadow / path.lstrip("/"), has_children)
    return shadow


# Fields dpkg accepts only in the states between: an "installed" stanza with
# one is a parse error for dpkg-query.
_IN_BETWEEN = {"config-version", "triggers-pending", "triggers-awaited"}


def _as_installed(stanza: str) -> str:
    """STANZA (dpkg-query -s) as dpkg records an installed package."""
    lines, skipping = [], False
    for line in stanza.strip().splitlines():
        if line[:1] not in (" ", "\t"):
            name = line.partition(":")[0].lower()
            skipping = name in _IN_BETWEEN
        if not skipping:
            lines.append("Status: install ok installed" if line.startswith("Status:") else line)
    return "\n".join(lines) + "\n"


def _listed_files(package: str, admindir: Path) -> list[tuple[str, str]]:
    """dpkg -L: (path as the package has it, where its file is: a diverted one's new name)."""
    done = system.run(["dpkg-query", f"--admindir={admindir}", "-L", package],
                      keep_stdout=True)
    if not done.ok:
        raise MaintError(f"dpkg-query -L {package} failed: "
                         f"{done.tail[-1] if done.tail else 'no output'}")
    listed: list[tuple[str, str]] = []
    for line in done.stdout.splitlines():
        diverted = _DIVERTED.match(line)
        if diverted and listed:
            listed[-1] = (listed[-1][0], diverted.group(1))
        elif line.startswith("/") and line not in ("/", "/."):
            listed.append((line, line))
    return listed


def _copy_file(source: Path, copy: Path) -> None:
    """SOURCE's bytes, owner and mode as the new file COPY (never through a symlink)."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stream:
        st = os.fstat(fd)
        replace_file(copy, iter(lambda: stream.read(trusted.MiB), b""),
                     mode=stat.S_IMODE(st.st_mode))
    os.chown(copy, st.st_uid, st.st_gid)
    os.chmod(copy, stat.S_IMODE(st.st_mode))  # chown clears set-id bits


def _mirror(source: Path, copy: Path, has_children: bool) -> None:
    """One listed path into the shadow root, as dpkg-repack would take it:
    a directory (or a symlink to one, when the list has files under it) as a
    directory with its owner and mode; a file hard-linked, else copied."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return  # a deleted conffile: dpkg-repack leaves it out too
    if stat.S_ISLNK(st.st_mode) and has_children and source.is_dir():
        st = os.stat(source)
    copy.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISDIR(st.st_mode):
        copy.mkdir(exist_ok=True)
        os.chown(copy, st.st_uid, st.st_gid)
        os.chmod(copy, stat.S_IMODE(st.st_mode))
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), copy)
        os.lchown(copy, st.st_uid, st.st_gid)
    elif stat.S_ISREG(st.st_mode):
        try:
            os.link(source, copy, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            _copy_file(source, copy)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(copy, stat.S_IMODE(st.st_mode))

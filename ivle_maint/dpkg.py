"""What dpkg knows of a package."""

from __future__ import annotations

from pathlib import Path

from . import quickrun
from .errors import MaintError
from .gates import trusted

# dpkg's md5sums and control files, read through the gate.
DPKG_FILE = trusted.Purpose("dpkg's package file list", 64 * trusted.MiB, MaintError)

FileList = dict[str, str]  # path (as dpkg lists it, or relative to the tree) -> digest


def package_version(package: str) -> str:
    """The version dpkg has for PACKAGE (during postinst: the new one)."""
    # The postinst asks, with the site down: returns when dpkg-query ends.
    done = quickrun.run(["dpkg-query", "-W", "-f=${Version}", package], keep_stdout=True,
                        timeout=60)
    if not done.ok or not done.stdout.strip():
        raise MaintError(f"dpkg does not know package {package}; pass --package-version")
    return done.stdout.strip()


# dpkg's states in which the unpacked files are the record's version's (dpkg-query(1));
# in "half-installed" they are neither version's, and the record names the old one.
UNPACKED = ("unpacked", "half-configured", "triggers-awaited", "triggers-pending", "installed")


def dpkg_record(package: str) -> tuple[str, str] | None:
    """dpkg's (status, version) of PACKAGE, or None when dpkg has no record."""
    try:
        done = quickrun.run(["dpkg-query", "-W", "-f=${Status}\\t${Version}", package],
                            keep_stdout=True, timeout=30)
    except MaintError:  # no dpkg-query at all (not Debian): nothing to learn from it
        return None
    if not done.ok or "\t" not in done.stdout:
        return None
    status, version = done.stdout.strip().split("\t", 1)
    word = status.split()[-1] if status.split() else ""
    if word in ("", "not-installed", "config-files"):
        return None
    return word, version.strip()


def parse_md5sums(data: bytes, where: str) -> FileList:
    """dpkg's md5sums: `DIGEST  PATH` per line, lines ended by "\n" alone,
    as dpkg writes them (splitlines would also end one at a form feed,
    U+0085 or U+2028 in a file's name)."""
    files: FileList = {}
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        if not line.strip():
            continue
        digest, sep, path = line.partition("  ")
        if not sep:
            digest, sep, path = line.partition(" *")
        if not sep or len(digest) != 32 or not path:
            raise MaintError(f"{where}: not an md5sums line: {line[:80]!r}")
        files[path.lstrip("/")] = digest
    return files


def read_file(path: Path) -> bytes | None:
    """A file of dpkg's database, through the gate; None when absent."""
    try:
        return trusted.read(path, DPKG_FILE)
    except FileNotFoundError:
        return None


def installed_md5sums(package: str, admindir: Path, arch: str | None = None) -> FileList | None:
    """The installed PACKAGE's md5sums from ADMINDIR's info/ (PKG.md5sums, or
    PKG:ARCH.md5sums for a Multi-Arch: same one); None when dpkg has none."""
    info = admindir / "info"
    named = [info / f"{package}:{arch}.md5sums"] if arch else \
        sorted(info.glob(f"{package}:*.md5sums"))
    for path in (info / f"{package}.md5sums", *named):
        data = read_file(path)
        if data is not None:
            return parse_md5sums(data, str(path))
    return None

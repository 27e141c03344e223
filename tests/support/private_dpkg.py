"""Tiny real .debs (dpkg-deb --build) and private dpkg roots to install them in.

A PrivateRoot is a directory with its own dpkg database (ROOT/var/lib/dpkg);
dpkg runs with --root on it and --force-script-chrootless (maintainer
scripts run here, with DPKG_ROOT set, instead of chrooted into an empty
root), so the host's dpkg database is never read or written.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

DPKG_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def build_deb(where: Path, package: str, version: str, files: Mapping[str, bytes], *,
              conffiles: Iterable[str] = (), arch: str = "all", preinst: str | None = None,
              md5sums: bool = True, scripts: Mapping[str, str] | None = None,
              fields: str = "") -> Path:
    """WHERE/PACKAGE_VERSION_ARCH.deb (':' as %3a, as apt names it) holding
    FILES (path without the leading / -> content), root's; CONFFILES among
    them; MD5SUMS: a DEBIAN/md5sums without the conffiles, as dh_md5sums
    writes it (without one, dpkg makes its own, conffiles included);
    SCRIPTS: maintainer scripts by name (preinst: the same as PREINST);
    FIELDS: more control lines (Depends, Conflicts...), each ended by a newline."""
    tag = hashlib.md5(repr(sorted(files.items())).encode()).hexdigest()[:8]
    tree = where / f"tree-{package}-{version}-{tag}"
    (tree / "DEBIAN").mkdir(parents=True)
    for path, data in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        f"Maintainer: Test <test@example.invalid>\n{fields}Description: a test package\n")
    conffiles = sorted(conffiles)
    if conffiles:
        (tree / "DEBIAN" / "conffiles").write_text("".join(f"/{c}\n" for c in conffiles))
    if md5sums:
        (tree / "DEBIAN" / "md5sums").write_bytes(b"".join(
            hashlib.md5(data).hexdigest().encode() + b"  " + path.encode() + b"\n"
            for path, data in sorted(files.items()) if path not in conffiles))
    for name, text in {**({"preinst": preinst} if preinst is not None else {}),
                       **(scripts or {})}.items():
        (tree / "DEBIAN" / name).write_text(text)
        (tree / "DEBIAN" / name).chmod(0o755)
    deb = where / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True, env=DPKG_ENV)
    return deb


class PrivateRoot:
    """A dpkg root of its own: ROOT/var/lib/dpkg is its database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.admindir = root / "var/lib/dpkg"
        for sub in ("info", "updates", "triggers"):
            (self.admindir / sub).mkdir(parents=True, exist_ok=True)
        (self.admindir / "status").touch()

    def dpkg(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        done = subprocess.run(
            ["dpkg", f"--root={self.root}", "--force-script-chrootless", "--force-unsafe-io",
             "--log=/dev/null", *args],
            check=False, capture_output=True, text=True, env={**DPKG_ENV, **(env or {})})
        assert done.returncode == 0, f"dpkg {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def install(self, deb: Path, env: Mapping[str, str] | None = None) -> str:
        return self.dpkg("-i", str(deb), env=env)

    def query(self, *args: str) -> str:
        return subprocess.run(["dpkg-query", f"--root={self.root}", *args], check=True,
                              capture_output=True, text=True, env=DPKG_ENV).stdout

    def files(self, package: str) -> dict[str, bytes]:
        """The package's regular files as installed here: path -> content."""
        found = {}
        for line in self.query("-L", package).splitlines():
            path = self.root / line.lstrip("/")
            if line.startswith("/") and path.is_file() and not path.is_symlink():
                found[line.lstrip("/")] = path.read_bytes()
        return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries(directory: Path) -> list[str]:
    """Every name in DIRECTORY, hidden ones included (what a failure left)."""
    return sorted(os.listdir(directory))

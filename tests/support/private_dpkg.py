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


def ivle_hooks(top: Path, repo: Path, log: Path) -> tuple[dict[str, str], dict[str, str]]:
    """IVLE's four maintainer scripts as ivle-maint ships them for copying
    (scripts/ivle-hooks/, which hand every call on), each call and its exit
    status logged to LOG as `SCRIPT ARGS -> STATUS` (ivle-maint's stderr
    too); the postinst's configure is not run (a first install's needs a
    node).  And the environment that finds REPO's ivle-maint (a wrapper in
    TOP/bin), its settings and state directories in TOP, for PrivateRoot's dpkg."""
    scripts = {}
    for name in ("preinst", "prerm", "postinst", "postrm"):
        shipped = (repo / "scripts" / "ivle-hooks" / name).read_text().replace("set -e\n", "", 1)
        line = f'ivle-maint hook {name} "$@"\n'
        assert line in shipped, name
        body = shipped.replace(line, f'rc=0; ivle-maint hook {name} "$@" 2>>{log} || rc=$?\n'
                               f'echo "{name} $* -> $rc" >>{log}; [ "$rc" = 0 ] || exit "$rc"\n')
        if name == "postinst":
            body = body.replace("#!/bin/sh\n", '#!/bin/sh\n[ "$1" = configure ] && exit 0\n', 1)
        scripts[name] = body
    bin_dir = top / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ivle-maint").write_text(
        f'#!/bin/sh\nPYTHONPATH={repo} exec /usr/bin/python3 -m ivle_maint "$@"\n')
    (bin_dir / "ivle-maint").chmod(0o755)
    state = top / "ivle-maint"  # its own, never the host's /var/lib/ivle-maint
    conf = top / "ivle-maint.conf"
    conf.write_text("[paths]\n" + "".join(f"{key} = {state / key}\n"
                                           for key in ("state", "run", "log", "backup")))
    return scripts, {"PATH": f"{bin_dir}:{DPKG_ENV['PATH']}", "IVLE_MAINT_CONF": str(conf)}

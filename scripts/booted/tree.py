"""The bookworm tree that booted nodes start from, built once by mmdebstrap.

Cached in $IVLE_MAINT_BOOTED_CACHE (default /var/cache/ivle-maint-booted)
under a key made from the suite, mirror and package list, so changing the
list builds a new tree (and removes the old one).  The .debs are kept in
CACHE/debs between builds (mmdebstrap's sync-in and sync-out hooks).
Nodes never write to the tree: they boot it with --volatile=overlay.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("IVLE_MAINT_E2E_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("IVLE_MAINT_BOOTED_CACHE", "/var/cache/ivle-maint-booted"))
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# IVLE's web module is mod_python (libapache2-mod-python), so the stand-in
# web application is a mod_python handler too.
PACKAGES = sorted([
    "apache2", "curl", "dbus", "dpkg-repack", "iproute2", "libapache2-mod-python", "openssh-server",
    "postgresql", "procps", "python-is-python3", "python3", "python3-configobj",
    "python3-debian", "python3-pglast", "python3-psutil", "python3-psycopg2", "python3-sh",
    "rsync", "systemd-sysv", "util-linux",
])
# Nodes share a network namespace, so nothing that listens starts at boot:
# each node's setup gives its services their own ports and then starts them.
DISABLED_AT_BOOT = ("apache2", "postgresql", "ssh")
# No man pages, docs or locales: about half the size.
EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*",
            "/usr/share/info/*", "/usr/share/lintian/*")


def key() -> str:
    text = (f"{SUITE} {MIRROR} {' '.join(PACKAGES)} {' '.join(EXCLUDES)} "
            f"disabled: {' '.join(DISABLED_AT_BOOT)}")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tree(say=print) -> Path:
    """The cached tree's path, built first if needed (one builder at a time)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{SUITE}-{key()}"
    debs = CACHE / "debs"
    debs.mkdir(exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".complete").exists():
            say(f"building {path} with mmdebstrap (once; about a minute)")
            partial = path.with_name(path.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            argv = ["mmdebstrap", "--variant=apt", "--format=directory",
                    "--include=" + ",".join(PACKAGES),
                    *[f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDES],
                    "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
                    f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
                    f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
                    "--customize-hook=chroot \"$1\" systemctl disable --quiet "
                    + " ".join(DISABLED_AT_BOOT),
                    SUITE, str(partial), MIRROR]
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL,
                           env={**os.environ, "PATH": HOST_PATH})
            (partial / ".complete").touch()
            shutil.rmtree(path, ignore_errors=True)
            partial.rename(path)
        for stale in CACHE.glob(f"{SUITE}-*"):  # trees of older package lists
            if stale != path:
                shutil.rmtree(stale, ignore_errors=True)
    return path


if __name__ == "__main__":
    print(tree())

"""A small IVLE-like package built by dpkg-buildpackage with dh_ivle_maint
from the source tree (debhelper/), as IVLE's package is built."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "debhelper"

INIT = """#!/bin/sh
### BEGIN INIT INFO
# Provides: ivle-usrmgt-server
# Required-Start: $remote_fs
# Required-Stop: $remote_fs
# Default-Start: 2 3 4 5
# Default-Stop: 0 1 6
### END INIT INFO
exit 0
"""
CONTROL = """Source: ivle
Section: web
Priority: optional
Maintainer: test <root@localhost>
Build-Depends: debhelper-compat (= 13), dh-sequence-ivle-maint
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: ivle
Architecture: all
Pre-Depends: ${misc:Pre-Depends}
Depends: ${misc:Depends}
Description: IVLE-like package for dh_ivle_maint's test
 Ships migrations and an init script.
"""
CHANGELOG = """ivle (9.9) unstable; urgency=medium

  * Test.

 -- test <root@localhost>  Tue, 24 Nov 2026 21:00:00 +0000
"""
GOOD_OPTIONS = "--no-stop-on-upgrade --no-restart-after-upgrade"
# The unit lintian asks IVLE's package for, beside the init script.
UNIT = """[Unit]
Description=IVLE user management server

[Service]
ExecStart=/usr/sbin/ivle-usrmgt-server

[Install]
WantedBy=multi-user.target
"""


def addon_tree(tmp: Path) -> Path:
    """The add-on laid out as dh-ivle-maint installs it."""
    root = tmp / "addon"
    (root / "bin").mkdir(parents=True)
    text = (ADDON / "dh_ivle_maint").read_text().replace("@IVLE_MAINT_VERSION@", "0.1.0")
    (root / "bin/dh_ivle_maint").write_text(text)
    (root / "bin/dh_ivle_maint").chmod(0o755)
    seq = root / "perl5/Debian/Debhelper/Sequence"
    seq.mkdir(parents=True)
    shutil.copyfile(ADDON / "ivle_maint.pm", seq / "ivle_maint.pm")
    return root


def build(tmp: Path, files: dict[str, bytes], options: str = GOOD_OPTIONS,
          systemd_options: str | None = None, scripts: dict[str, str] | None = None,
          ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Build the package; with SYSTEMD_OPTIONS it also ships a unit, which
    dh_installsystemd handles (with those options: "" is its default); SCRIPTS:
    maintainer scripts of its own (debian/ivle.NAME), by name."""
    addon = addon_tree(tmp)
    src = tmp / "ivle-9.9"
    (src / "debian/source").mkdir(parents=True)
    (src / "userdb/migrations").mkdir(parents=True)
    for name, data in files.items():
        (src / "userdb/migrations" / name).write_bytes(data)
    (src / "debian/source/format").write_text("3.0 (native)\n")
    (src / "debian/control").write_text(CONTROL)
    (src / "debian/changelog").write_text(CHANGELOG)
    (src / "debian/rules").write_text(
        f"#!/usr/bin/make -f\n%:\n\tdh $@\n\noverride_dh_installinit:\n"
        f"\tdh_installinit --name=ivle-usrmgt-server {options}\n"
        + ("" if systemd_options is None else "\noverride_dh_installsystemd:\n"
           f"\tdh_installsystemd --name=ivle-usrmgt-server {systemd_options}\n"))
    if systemd_options is not None:
        (src / "debian/ivle.ivle-usrmgt-server.service").write_text(UNIT)
    (src / "debian/rules").chmod(0o755)
    (src / "debian/ivle.install").write_text(
        "userdb/migrations/* usr/share/ivle/userdb/migrations/\n")
    (src / "debian/ivle.ivle-usrmgt-server.init").write_text(INIT)
    for name, text in (scripts or {}).items():
        (src / f"debian/ivle.{name}").write_text(text)
    env = {"PATH": f"{addon}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp),
           "PERL5LIB": str(addon / "perl5"), "DH_AUTOSCRIPTDIR": str(ADDON / "autoscripts"),
           "LANG": "C.UTF-8"}
    done = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b", "-d"], cwd=src, env=env,
                          capture_output=True, text=True, check=False)
    control = tmp / "control"
    if done.returncode == 0:
        subprocess.run(["dpkg-deb", "-e", str(tmp / "ivle_9.9_all.deb"), str(control)],
                       check=True)
    return done, control

"""apt-get and dpkg, as far as they touch IVLE, for a sandbox node.

    python3 -m ivle_sandbox.fakeapt --root ROOT install VERSION    # apt-get install --only-upgrade
    python3 -m ivle_sandbox.fakeapt --root ROOT configure-pending  # dpkg --configure -a

The node's package state lives in ROOT/var/lib/fakedpkg/ivle.json
(absent: the installed VERSION file, configured).  install runs what dpkg
runs for an upgrade: NEW-preinst upgrade OLD NEW (on failure the
abort-upgrade calls, OLD stays), the unpack (sandbox code and VERSION's
migrations from releases.py), NEW-postinst configure OLD (on failure the
package stays half-configured).  Like apt, install refuses to run while a
package is half-configured.  Each hook is its own `ivle-maint hook`
process, with this process's environment (IVLECONF, IVLE_MAINT_CONF).
The Ansible playbook's tests use this as its package upgrade command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ivle_sandbox.jailtree import install_code
from ivle_sandbox.releases import RELEASES

INSTALLED, HALF = "installed", "half-configured"


def _state_file(root: Path) -> Path:
    return root / "var" / "lib" / "fakedpkg" / "ivle.json"


def read_state(root: Path) -> dict[str, Any]:
    path = _state_file(root)
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    version = (root / "usr" / "share" / "ivle" / "VERSION").read_text().strip()
    return {"version": version, "status": INSTALLED, "old": ""}


def write_state(root: Path, state: dict[str, Any]) -> None:
    path = _state_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state) + "\n")


def hook(*args: str) -> int:
    """One maintainer-script call: ivle-maint hook ARGS, output passed through."""
    argv = [sys.executable, "-m", "ivle_maint", "hook", *args]
    print(f"fakeapt: {' '.join(argv[3:])}", flush=True)
    return subprocess.run(argv, stdin=subprocess.DEVNULL, check=False, env=os.environ).returncode


def unpack(root: Path, version: str) -> None:
    share = root / "usr" / "share" / "ivle"
    install_code(share, root / "usr" / "lib" / "ivle", share / "userdb" / "migrations", version,
                 RELEASES.get(version, {}))


def configure(root: Path, state: dict[str, Any]) -> int:
    """postinst configure OLD; the package is installed once it succeeds."""
    if hook("--package-version", state["version"], "postinst", "configure", state["old"]):
        print("fakeapt: E: ivle: post-installation script failed; dpkg --configure -a resumes",
              file=sys.stderr)
        return 1
    write_state(root, {**state, "status": INSTALLED})
    return 0


def install(root: Path, new: str) -> int:
    state = read_state(root)
    if state["status"] != INSTALLED:
        print("fakeapt: E: dpkg was interrupted, you must manually run 'dpkg --configure -a'",
              file=sys.stderr)
        return 100
    old = state["version"]
    if old == new:
        print(f"fakeapt: ivle is already the newest version ({new})")
        return 0
    if hook("preinst", "upgrade", old, new):
        hook("postrm", "abort-upgrade", old, new)
        hook("--package-version", old, "postinst", "abort-upgrade", new)
        print(f"fakeapt: E: ivle: pre-installation script failed; {old} kept", file=sys.stderr)
        return 1
    unpack(root, new)
    state = {"version": new, "status": HALF, "old": old}
    write_state(root, state)
    return configure(root, state)


def configure_pending(root: Path) -> int:
    state = read_state(root)
    return 0 if state["status"] == INSTALLED else configure(root, state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fakeapt", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the sandbox node's root")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("install").add_argument("version")
    sub.add_parser("configure-pending")
    args = parser.parse_args(argv)
    if args.action == "install":
        return install(args.root, args.version)
    return configure_pending(args.root)


if __name__ == "__main__":
    sys.exit(main())

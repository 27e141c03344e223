"""Source installs: build and install an IVLE tree as IVLE's upgrade procedure says.

setup.py runs as root, even to ask its version, and imports the tree's
code: the whole tree must be one only root can change (the gate's
check_tree: every entry root's, not writable by others, every directory
above it too).  A tree a student (or the administrator's own account) can
write is refused before anything runs from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from . import system
from .errors import MaintError, UsageError
from .gates import trusted
from .logfile import BoundedOutput

if TYPE_CHECKING:
    from .context import UpgradeContext

log = logging.getLogger(__name__)


def _setup_py(source: Path) -> str:
    """The tree's setup.py, the tree checked by the gate first."""
    script = source / "setup.py"
    if not script.is_file():
        raise MaintError(f"{source}: no setup.py here; is this an IVLE source tree?")
    trusted.check_tree(source)
    return str(script)


def check_source(source: Path) -> None:
    """Refuse (exit 2) a --source that is no IVLE tree, before anything stops."""
    what = f"upgrade --source {source}"
    if not source.exists():
        raise UsageError(f"{what}: no such directory")
    if not source.is_dir():
        raise UsageError(f"{what}: not a directory")
    if not (source / "setup.py").is_file():
        raise UsageError(f"{what}: no setup.py here; is this an IVLE source tree?")
    trusted.check_tree(source)


def source_version(source: Path) -> str:
    """The version the tree's setup.py declares."""
    done = system.run([_setup_py(source), "--version"], cwd=str(source), keep_stdout=True)
    lines = done.stdout.strip().splitlines()
    if not done.ok or not lines:
        raise MaintError(f"{source}/setup.py --version failed; give the version with --to")
    return lines[-1].strip()


def install_source(source: Path, ctx: UpgradeContext) -> None:
    """./setup.py build, then ./setup.py install, output to the log."""
    script = _setup_py(source)
    for action in ("build", "install"):
        ctx.reporter.info(f"./setup.py {action} in {source} ...")
        with BoundedOutput(log.info) as logged:
            done = system.run([script, action], cwd=str(source), on_line=logged)
        if not done.ok:
            tail = done.tail[-1] if done.tail else "no output"
            raise MaintError(
                f"./setup.py {action} failed with status {done.exit_code}: {tail}",
                resume=ctx.resume,
            )

"""gates.root: every command but `settings` needs root, decided in one place
and said in one line (exit 2) before a command reads or touches anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ivle_maint.cli import build_parser
from ivle_maint.gates import root

ROOT = Path(__file__).resolve().parents[3]
NOBODY = 65534


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def test_every_command_is_decided_and_only_settings_is_open_to_all() -> None:
    assert [c for c in commands() if not root.needs_root(c)] == ["settings"]
    assert not root.needs_root(None)  # --help, --version


@pytest.mark.parametrize("argv", [["consoles", "list"], ["status"], ["mounts", "list"],
                                  ["db", "status"], ["hook", "preinst", "upgrade", "1", "2"]])
def test_a_command_that_needs_root_is_one_line_and_exit_2_for_another_user(
        tmp_path: Path, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IVLE_MAINT_CONF": str(tmp_path / "no.conf")}
    user = NOBODY if os.geteuid() == 0 else None  # as root: run it as nobody
    done = subprocess.run([sys.executable, "-m", "ivle_maint", *argv], env=env, user=user,
                          capture_output=True, text=True, timeout=60, cwd="/", check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"ivle-maint: error: {argv[0]}")
    assert done.stderr.endswith(f" needs root (this is uid {user or os.geteuid()}); run it as "
                                "root, e.g. with sudo\n")
    assert done.stderr.count("\n") == 1

"""A library that does not load (a broken python3-debian) is one error line.

Outside the command line every module imports what it needs at the top,
so a command that uses IVLE's procedure loads python3-debian with it (to
compare versions; psutil, sh, pglast and DebFile are the upgrade's
preload, tests/unit/test_import_budget.py): a broken install must still
end in one line naming the module, not a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="the commands need root (gates/root.py)")
@pytest.mark.parametrize("command", [["plan", "--from", "1.0", "--to", "1.1"],
                                     ["hook", "preinst", "upgrade", "1.0", "1.1"]])
def test_a_broken_library_is_one_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "debian.py").write_text("raise ImportError('broken python3-debian')\n")
    (tmp_path / "ivle-maint.conf").write_text("")  # every setting its default
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}",
           "IVLE_MAINT_CONF": str(tmp_path / "ivle-maint.conf")}
    done = subprocess.run([sys.executable, "-m", "ivle_maint", *command], check=False,
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == ("ivle-maint: error: Python module debian does not load: "
                           "broken python3-debian\n")

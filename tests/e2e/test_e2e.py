"""End-to-end: ivle-maint's .deb and a stand-in IVLE package through real dpkg,
apt and init scripts in a throwaway bookworm chroot (scripts/e2e/run).

Run with `make e2e` (pytest -m e2e): needs root, mmdebstrap and Debian's
mirror the first time (the chroot is cached in /var/cache/ivle-maint-e2e).
A plain `pytest` run skips these tests unless `-m e2e` selects them.
Each scenario's checks are printed as they pass (shown live with -s).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "scripts" / "e2e" / "run"
SCENARIOS = ("lifecycle", "upgrade", "failed-migration", "failed-preinst", "failed-preflight",
             "reinstall", "rollback", "rollback-failed-migration", "cluster")

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root]


@pytest.fixture(scope="session")
def ivle_maint_deb(request: pytest.FixtureRequest) -> Path:
    if "e2e" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("end-to-end: run with make e2e (pytest -m e2e)")
    if os.geteuid() != 0:
        pytest.skip("end-to-end: needs root (chroot, mount namespaces, dpkg)")
    subprocess.run(["make", "-C", str(REPO), "deb"], check=True, stdout=subprocess.DEVNULL)
    debs = sorted((REPO / "build" / "deb").glob("ivle-maint_*_all.deb"))
    assert debs, "make deb built no ivle-maint_*_all.deb"
    return debs[-1]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario, ivle_maint_deb):
    proc = subprocess.Popen(
        ["/usr/bin/python3", str(RUN), "--deb", str(ivle_maint_deb), scenario],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # streamed, so a CI log shows each check as it passes
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    status = proc.wait(timeout=900)
    failures = [line for line in lines if line.startswith("FAIL ")]
    assert status == 0, failures or lines[-20:]
    assert f"SCENARIO {scenario}: PASSED" in "\n".join(lines)

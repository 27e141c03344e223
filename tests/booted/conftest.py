"""Fixtures of the booted scenarios (test_booted.py).

Fixtures:
    repos    session: the apt repositories the nodes install from (skips
             unless run as root with -m booted and systemd-nspawn present)
    cluster  function: a master and three slaves booted at 1.0 on the
             master's database; each slave's [cluster] probe_url set before
             IVLE is installed, its row refreshed once its web server runs
             (guest.py setup-cluster), as a real node's would be
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from booted import scenario
from booted.scenario import Guest

CLUSTER = ["master", "slave1", "slave2", "slave3"]


@pytest.fixture(scope="session")
def repos(request: pytest.FixtureRequest) -> Iterator[dict[str, Path]]:
    if "booted" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("booted nodes: run with make booted (pytest -m booted)")
    if os.geteuid() != 0:
        pytest.skip("booted nodes: need root (systemd-nspawn, cgroups, network namespaces)")
    if not shutil.which("systemd-nspawn"):
        pytest.skip("systemd-nspawn missing: scripts/install-deps --packaging")
    work = Path(tempfile.mkdtemp(prefix="ivle-booted-"))
    try:
        yield scenario.repositories(work)
    finally:
        shutil.rmtree(work)


@pytest.fixture
def cluster(repos: dict[str, Path]) -> Iterator[dict[str, Guest]]:
    """CLUSTER booted, by name, the master first."""
    with scenario.booted_cluster(CLUSTER, repos) as guests:
        yield guests

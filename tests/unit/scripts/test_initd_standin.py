"""The init-script stand-in fails its start, as Apache does, when another
process holds its port; and a test process's ports come from its own range."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from ivle_sandbox import postgres, schema

STANDIN = Path(__file__).resolve().parents[2] / "fakes" / "initd-service"


@pytest.mark.skipif(os.geteuid() != 0, reason="the stand-in's start needs root")
def test_a_port_another_process_holds_fails_the_start(tmp_path: Path) -> None:
    for sub in ("run", "var/log"):
        (tmp_path / sub).mkdir(parents=True)
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        done = subprocess.run(
            [str(STANDIN), "--root", str(tmp_path), "--port", str(port), "apache2", "start"],
            capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done.stdout
    assert "could not bind" in done.stderr
    assert not (tmp_path / "run" / "apache2.pid").exists()
    assert "apache2 start FAILED" in (tmp_path / "var/log/services.log").read_text()


def test_ports_of_a_claimed_slot_lie_below_the_ephemeral_range() -> None:
    schema.claim_unixids()
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {postgres.free_port() for _ in range(5)}
    assert len(ports) == 5
    assert all(port < low for port in ports)

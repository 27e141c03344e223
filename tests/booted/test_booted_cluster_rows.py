"""Booted cluster: what the master may believe of a slave's row.

A slave's row recorded at install time, before its web server and its
probe URL existed, says "down" with the default probe URL; its web server
then starts (as systemd starts it at boot).  The master must not take that
row's word: before, it probed the old URL, got no answer and migrated under
a slave serving the old code.  Run with `make booted` (pytest -m booted).
"""

from __future__ import annotations

import pytest
from e2e.driver.config import MIGRATIONS_NEW as NEW_KEYS

pytestmark = [pytest.mark.booted, pytest.mark.needs_root]

CONF = "/etc/ivle/ivle-maint.conf"


def test_master_does_not_migrate_under_a_slave_whose_install_time_row_says_down(cluster):
    slave, master = cluster["slave1"], cluster["master"]
    probe_line = f"probe_url = http://127.0.0.1:{slave.ports.web}/"
    # The row as the install wrote it: web server not yet running, no probe URL.
    slave.run("sed", "-i", "/^probe_url/d", CONF, check=True)
    slave.run("systemctl", "stop", "apache2", check=True)
    slave.run("ivle-maint", "cluster", "register", check=True)
    slave.run("systemctl", "start", "apache2", check=True)  # as at boot
    slave.run("sh", "-c", f"echo '{probe_line}' >> {CONF}", check=True)  # set up later
    # The other slaves' before-phase ran: they are down, and their rows say so.
    for name in ("slave2", "slave3"):
        cluster[name].run("ivle-maint", "cluster", "prepare", "--to", "1.1", check=True)
    # The master's patience is short: it waits, then refuses.
    master.run("sed", "-i", "s/^slaves_timeout = .*/slaves_timeout = 5/", CONF, check=True)

    done = master.run("sh", "-c", "apt-get update -q >/dev/null && apt-get upgrade -y -q")
    print(done.stdout[-4000:], flush=True)
    assert done.returncode != 0
    assert "nothing migrated" in done.stdout and "slave1 (slave, down, idle" in done.stdout
    assert "slave2 (" not in done.stdout and "slave3 (" not in done.stdout
    marker = master.facts()["marker"]
    assert not any(k in marker for k in NEW_KEYS), marker
    assert slave.facts()["units"]["apache2.service"]["ActiveState"] == "active"

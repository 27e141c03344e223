"""A rollback on a booted node (real systemd, apache2, PostgreSQL 15, dpkg):
1.0 -> 1.1 by apt-get upgrade, a user's row written on 1.1, then
`ivle-maint rollback --accept-data-loss` (1.1's first migration changes
rows: the way back is full) while a client watches.

Run with `make booted` (pytest -m booted), one scenario alone:
    /usr/bin/python3 -m pytest -m booted -s tests/booted/test_booted_rollback.py
"""

from __future__ import annotations

import re
import subprocess
import time
from contextlib import ExitStack

import pytest
from booted import scenario  # scripts/: on sys.path by setup.cfg's pythonpath
from booted.scenario import Guest, Probe
from e2e.driver.config import MIGRATIONS_OLD as OLD_KEYS

pytestmark = [pytest.mark.booted, pytest.mark.needs_root]

WRITE = ("runuser", "-u", "postgres", "--", "psql", "-q", "-X", "-d", "ivle", "-c",
         "INSERT INTO login (login, unixid, admin, nick, fullname) "
         "VALUES ('frank', 5006, false, 'frank', 'Frank')")


def test_a_completed_upgrade_rolls_back_and_the_old_version_is_served_again(repos):
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        with Probe(guest) as upgrade_probe:
            time.sleep(1.0)
            assert guest.run("apt-get", "upgrade", "-y", "-q").returncode == 0
            time.sleep(1.0)
            upgrade_probe.stop()
        status = guest.run("ivle-maint", "status", check=True).stdout
        assert "restore point of 1.0 -> 1.1 (pinned" in status, status
        guest.run(*WRITE, check=True)

        refused = guest.run("ivle-maint", "rollback")
        assert refused.returncode == 1 and "would be lost" in refused.stdout, refused.stdout
        # Watched as 1.1 ("old" here) going back to 1.0 ("new").
        with Probe(guest, old="1.1", new="1.0") as probe:
            time.sleep(1.0)
            done = guest.run("ivle-maint", "rollback", "--accept-data-loss")
            time.sleep(1.0)
            probe.stop()
        print(done.stdout[-6000:], flush=True)
        assert done.returncode == 0, done.stdout[-3000:]
        assert " FAIL " not in done.stdout
        after = guest.facts()
        assert after["ivle"] == "install ok installed 1.0"
        assert after["template_version"] == "1.0"
        assert set(after["marker"]) == set(OLD_KEYS), after["marker"]
        assert guest.run("dpkg", "--audit").stdout.strip() == ""
        assert probe.counts["errors"] == 0, probe.errors()[:5]
        seq = probe.sequence()
        assert seq[0] == "old" and seq[-1] == "new", seq  # 1.1, then 1.0 to the end
        print(f"outage: upgrade {upgrade_probe.outage}, rollback {probe.outage}", flush=True)


def test_an_additive_release_rolls_back_code_only_and_keeps_what_users_wrote(repos):
    """1.1's migrations are all additive: the way back is code only, the
    database stays, the row written on 1.1 with it."""
    with scenario.prepared_nodes(["ivle-node"], "additive", repos) as guests:
        guest = guests["ivle-node"]
        assert guest.run("apt-get", "upgrade", "-y", "-q").returncode == 0
        guest.run(*WRITE, check=True)
        with Probe(guest, old="1.1", new="1.0") as probe:
            time.sleep(1.0)
            done = guest.run("ivle-maint", "rollback")
            time.sleep(1.0)
            probe.stop()
        print(done.stdout[-4000:], flush=True)
        assert done.returncode == 0, done.stdout[-3000:]
        assert "code only: every migration applied since the restore point is additive" \
            in done.stdout
        after = guest.facts()
        assert after["ivle"] == "install ok installed 1.0"
        count = guest.run("runuser", "-u", "postgres", "--", "psql", "-tA", "-X", "-d", "ivle",
                          "-c", "SELECT count(*) FROM login WHERE login = 'frank'", check=True)
        assert count.stdout.strip() == "1"  # nothing users wrote is lost
        assert probe.counts["errors"] == 0, probe.errors()[:5]
        assert probe.sequence()[-1] == "new", probe.sequence()  # 1.0 to the end


def web_log(guest: Guest) -> str:
    """The first lines of the node's Apache error log, a traceback's frames
    left out (its last line, the error, stays), for a failure's message."""
    return guest.run("sh", "-c", "grep -v 'HandlerDispatch\\|/ivleweb.py\\|psycopg2/' "
                     "/var/log/apache2/error.log | head -n 60").stdout


def node_state(guest: Guest) -> str:
    """What the node says of itself and its last ivle-maint log's end."""
    return guest.run("sh", "-c", "ivle-maint status; ivle-maint cluster status; "
                     "tail -n 40 \"$(ls -t /var/log/ivle-maint/*.log | head -n 1)\"").stdout


def at_once(cluster: dict[str, Guest], *cmd: str) -> dict[str, str]:
    """CMD on every node at the same time; each one's output.  Every node
    ends before any is judged, so a failure shows each failing node's output
    and what each slave's web server and journal said."""
    running = [(name, subprocess.Popen(
        guest.node.argv("env", guest.sandbox_env, *cmd), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for name, guest in cluster.items()]
    outputs = {name: proc.communicate(timeout=900)[0] for name, proc in running}
    for name, out in outputs.items():
        print("\n".join(f"[{name}] {line}" for line in out.splitlines()
                        if line.startswith("ivle-maint")), flush=True)
    failed = [name for name, proc in running if proc.returncode != 0]
    if failed:
        for name, guest in cluster.items():
            print(f"--- {name}:\n{web_log(guest)}\n{node_state(guest)}", flush=True)
    assert not failed, "\n".join(f"{name}: {' '.join(cmd)} failed:\n{outputs[name][-3000:]}"
                                  for name in failed)
    return outputs


def test_a_cluster_rolls_back_at_once_with_no_client_error(cluster):
    """A master and three slaves upgraded by apt-get at once, then `ivle-maint
    rollback --accept-data-loss` on all four at once (as the playbook's
    ivle_rollback does): a probe on every slave sees 1.1, then 1.0 to the
    end, no error; the master's table of checks finds every slave on 1.0."""
    at_once(cluster, "sh", "-c", "apt-get update -q >/dev/null && apt-get upgrade -y -q")
    with ExitStack() as stack:
        probes = {name: stack.enter_context(Probe(guest, old="1.1", new="1.0"))
                  for name, guest in cluster.items() if name != "master"}
        time.sleep(1.0)
        outputs = at_once(cluster, "ivle-maint", "rollback", "--accept-data-loss")
        time.sleep(1.0)
        for probe in probes.values():
            probe.stop()
    assert "full:" in outputs["master"] and " FAIL " not in outputs["master"]
    assert re.search(r"pass\s+slaves\s+3 slave\(s\) serve 1\.0", outputs["master"])
    for name, guest in cluster.items():
        assert guest.facts()["ivle"] == "install ok installed 1.0", name
    for name, probe in probes.items():
        if probe.counts["errors"]:
            print(f"--- {name}'s Apache error log:\n{web_log(cluster[name])}", flush=True)
        assert probe.counts["errors"] == 0, (name, probe.errors()[:5])
        assert probe.sequence()[-1] == "new", probe.sequence()

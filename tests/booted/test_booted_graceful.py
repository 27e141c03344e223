"""Booted node: stop mode's web stop is graceful (issue 25, "a shorter outage").

A request in flight while stop-web runs completes with 200; a client asking
as fast as it can across the stop sees answers and refused connections,
never a reset; systemd still records apache2's stop as a stop job.  Also
prints how long each service operation takes on the node (no assertion on
time: the numbers are for the report and doc/developing.md).

    flock /tmp/booted.lock /usr/bin/python3 -m pytest -m booted -s tests/booted \
        -k test_booted_graceful
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from booted import scenario
from booted.scenario import Guest

pytestmark = [pytest.mark.booted, pytest.mark.needs_root]

PROBE = Path(scenario.HERE) / "probe.py"
# The page's query waits while this transaction holds login's lock: a request
# kept in flight inside Apache's child, in IVLE's own code, for that long.
HOLD_LOGIN = "BEGIN; LOCK TABLE login; SELECT pg_sleep({seconds}); COMMIT"
HELD = "granted AND mode = 'AccessExclusiveLock' AND relation = 'login'::regclass"
WAITING = "NOT granted AND relation = 'login'::regclass"


def hold_login(guest: Guest, seconds: float) -> subprocess.Popen[str]:
    argv = guest.node.argv("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p",
                           str(guest.ports.db), "-d", "ivle", "-c",
                           HOLD_LOGIN.format(seconds=seconds))
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, text=True)


def locks(guest: Guest, where: str) -> int:
    done = guest.node.run("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-t", "-A",
                          "-p", str(guest.ports.db), "-d", "ivle", "-c",
                          f"SELECT count(*) FROM pg_locks WHERE {where}")
    return int(done.stdout.strip() or 0)


def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def ask_once(guest: Guest, got: list[str]) -> threading.Thread:
    """One page request from the guests' network; its status (or error) into GOT."""
    code = ("import http.client, sys\n"
            "c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=60)\n"
            "try:\n"
            "    c.request('GET', '/'); r = c.getresponse(); b = r.read().decode()\n"
            "    print(r.status, 'ivle-version' in b)\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")

    def run() -> None:
        done = subprocess.run(["ip", "netns", "exec", guest.node.netns, "/usr/bin/python3",
                               "-c", code, str(guest.ports.web)], capture_output=True,
                              text=True, check=False)
        got.append(done.stdout.strip() or done.stderr.strip()[-200:])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def fast_probe(guest: Guest, timeline: Path) -> subprocess.Popen[str]:
    """probe.py with no pause between requests: the most connections a stop can meet."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", guest.node.netns, "/usr/bin/python3", str(PROBE),
         f"http://127.0.0.1:{guest.ports.web}/", "--old", "1.0", "--new", "1.1",
         "--count", "1000000", "--interval", "0", "--json", str(timeline)],
        stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and "started" in proc.stdout.readline()
    return proc


def probe_answers(proc: subprocess.Popen[str], timeline: Path) -> list[list[object]]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    print(out.strip(), flush=True)
    return list(json.loads(timeline.read_text())["answers"])


def apache_jobs(guest: Guest, since: float) -> list[str]:
    done = guest.node.run("journalctl", "-q", "--no-pager", "-o", "cat", "_PID=1",
                          "UNIT=apache2.service", f"--since=@{since:.0f}")
    return [line.split(" ", 1)[0] for line in done.stdout.splitlines()
            if line.split(" ", 1)[0] in ("Stopping", "Stopped", "Starting", "Started")]


def test_stop_web_lets_a_request_in_flight_complete(repos, tmp_path):
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        since = time.time() - 1
        probe = fast_probe(guest, tmp_path / "timeline.json")
        time.sleep(0.5)  # old pages first
        locker = hold_login(guest, 3)
        until("psql never held login's lock", lambda: locks(guest, HELD) > 0)
        got: list[str] = []
        request = ask_once(guest, got)
        until("IVLE's page never waited on the lock", lambda: locks(guest, WAITING) > 1)
        done = guest.run("ivle-maint", "services", "stop", "web")
        print(done.stdout, flush=True)
        request.join()
        locker.wait(timeout=60)
        time.sleep(0.3)  # and refused connections after it
        answers = probe_answers(probe, tmp_path / "timeline.json")
        errors = [a for a in answers if a[1] == "error"]
        print(f"in flight: {got}", flush=True)
        assert done.returncode == 0
        assert "apache2: stopped gracefully (in-flight requests done" in done.stdout
        # Its listening sockets held and filtered (the node's root may: CAP_NET_ADMIN).
        assert "may be reset" not in done.stdout, done.stdout
        assert got == ["200 True"], got
        assert errors == [], errors[:5]
        # (The probe's own page in flight completes too; its asset, asked on a
        # new connection after the stop, is refused: counted as refused.)
        assert {str(a[1]) for a in answers} == {"old", "refused"}
        assert guest.facts()["units"]["apache2.service"]["ActiveState"] == "inactive"  # type: ignore[index]
        assert apache_jobs(guest, since)[-2:] == ["Stopping", "Stopped"]


def inside(guest: Guest, *cmd: str) -> float:
    """Seconds CMD takes inside the node (no nsenter in the figure)."""
    code = ("import subprocess, sys, time\nt = time.monotonic()\n"
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
            "print(time.monotonic() - t)\n")
    return float(guest.node.run("python3", "-c", code, *cmd).stdout.split()[-1])


# The graceful stop's signal and wait alone (ivle-maint's own code, as installed).
DRAIN = ("import signal, subprocess\n"
         "from ivle_maint.services.drain import signal_and_drain\n"
         "pid = subprocess.run(['systemctl', 'show', '-p', 'MainPID', '--value', 'apache2'],"
         " capture_output=True, text=True, check=True).stdout\n"
         "assert signal_and_drain(int(pid), signal.SIGWINCH, 60)\n")
OPERATIONS = [
    ("systemctl is-active apache2", ("systemctl", "is-active", "apache2")),
    ("systemctl daemon-reload", ("systemctl", "daemon-reload")),
    ("ivle-maint hold check", ("ivle-maint", "hold", "check")),
    ("systemctl stop apache2", ("systemctl", "stop", "apache2")),
    ("systemctl start apache2", ("systemctl", "start", "apache2")),
    ("invoke-rc.d apache2 stop", ("invoke-rc.d", "apache2", "stop")),
    ("invoke-rc.d apache2 start", ("invoke-rc.d", "apache2", "start")),
    ("drain: graceful-stop to children gone", ("python3", "-c", DRAIN)),
    ("systemctl stop apache2, drained", ("systemctl", "stop", "apache2")),
    ("systemctl start apache2 (again)", ("systemctl", "start", "apache2")),
    ("ivle-maint services stop web", ("ivle-maint", "services", "stop", "web")),
    ("ivle-maint services start web", ("ivle-maint", "services", "start", "web")),
    ("systemctl restart ivle-usrmgt-server", ("systemctl", "restart", "ivle-usrmgt-server")),
    ("ivle-maint services restart usrmgt", ("ivle-maint", "services", "restart", "usrmgt")),
    ("ivle-maint settings", ("ivle-maint", "settings")),
]


def test_service_timings(repos):
    """Where a service operation's time goes on a booted node: printed, 5 rounds."""
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        rounds: dict[str, list[float]] = {label: [] for label, _ in OPERATIONS}
        for _ in range(5):
            for label, cmd in OPERATIONS:
                rounds[label].append(inside(guest, *cmd))
        for label, values in rounds.items():
            values.sort()
            print(f"timing: {label:40s} median {values[2]:.3f}s  "
                  f"min {values[0]:.3f}s  max {values[-1]:.3f}s", flush=True)

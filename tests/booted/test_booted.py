"""Booted nodes: real systemd, real apache2 (mod_python) and PostgreSQL 15 units,
the stand-in IVLE package built by dpkg-buildpackage, a client watching.

Run with `make booted` (pytest -m booted); needs root, systemd-nspawn and,
the first time, Debian's mirror (the tree is cached in
/var/cache/ivle-maint-booted).  One scenario alone:
    /usr/bin/python3 -m pytest -m booted -s tests/booted -k test_upgrade
The cluster scenarios repeat the random order with IVLE_MAINT_E2E_SEED.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from booted import playbook, scenario  # scripts/: on sys.path by setup.cfg's pythonpath
from booted.scenario import Guest, Probe
from e2e.driver.config import GOOD_FIRST_MIGRATION, TEMPLATE
from e2e.driver.config import MIGRATIONS_NEW as NEW_KEYS
from e2e.driver.config import MIGRATIONS_OLD as OLD_KEYS

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.booted, pytest.mark.needs_root]


def upgrade_watched(guest: Guest, *cmd: str) -> tuple[float, object, Probe]:
    """Run cmd inside while a probe watches the site; returns (start, result, probe)."""
    with Probe(guest) as probe:  # killed if anything below fails
        time.sleep(1.0)  # some answers of the old version first
        started = time.time()
        done = guest.run(*cmd)
        print(done.stdout[-6000:], flush=True)
        time.sleep(1.0)  # and some of whatever the node serves now
        probe.stop()
    return started, done, probe


def events(facts: dict, since: float) -> list[tuple[str, str, float]]:
    """(unit short name, 'Stopped'/'Started'/..., time) of systemd's jobs since `since`."""
    found = []
    for e in facts["events"]:
        if e["t"] >= since:
            verb = str(e["message"]).split(" ", 1)[0]
            found.append((str(e["unit"]).removesuffix(".service"), verb, float(e["t"])))
    return found


def check_upgraded(before: dict, after: dict, since: float,
                   web_jobs: tuple[str, ...] = ("Stopped", "Started")) -> None:
    """Every step of IVLE's procedure, as the node and systemd saw them."""
    assert after["ivle"] == "install ok installed 1.1"
    units = after["units"]
    assert units["apache2.service"]["ActiveState"] == "active"
    assert units["ivle-usrmgt-server.service"]["ActiveState"] == "active"
    assert after["usrmgt_pid"] and after["usrmgt_pid"] != before["usrmgt_pid"]

    seen = events(after, since)
    print("systemd jobs:", ", ".join(f"{u} {v}" for u, v, _t in seen), flush=True)
    web = [(v, t) for u, v, t in seen if u == "apache2"]
    usrmgt = [(v, t) for u, v, t in seen if u == "ivle-usrmgt-server"]
    assert tuple(v for v, _t in web) == web_jobs, web
    assert [v for v, _t in usrmgt] == ["Stopped", "Started"], usrmgt
    web_stop, web_start = web[0][1], web[-1][1]
    marker = after["marker"]
    assert all(marker[k][0] == "baseline" for k in OLD_KEYS), marker
    assert all(k in marker and marker[k][0] != "baseline" for k in NEW_KEYS), marker
    migrated = max(marker[k][1] for k in NEW_KEYS)
    # IVLE's order: web down, code, migrations, usrmgt restarted, web up.
    assert web_stop < after["code_time"] < migrated < usrmgt[0][1] < usrmgt[1][1] < web_start

    assert not after["consoles"] and not after["jail_mounts"]
    assert after["themes"].get("alice") == "dark" and after["themes"].get("bob") == "light"
    assert after["dumps"], "a pre-migration dump"
    assert after["template_version"] == "1.1"
    assert after["homes"] == before["homes"], "every home file intact"
    assert after["media"] not in (None, "1.0")


# The graceful stop's warning when it cannot hold Apache's listening sockets.
NOT_HELD = "connections queued at its stop may be reset"


def check_probe(probe: Probe, *, final: str = "new", context: object = None) -> None:
    """No error, old pages first and FINAL last, never old after new.  On an
    error the answers around it (times from the probe's start) and CONTEXT
    (e.g. the node's web jobs) are in the message: a reset is rare, its
    moment is what tells where it came from."""
    errors = probe.errors()
    if errors:
        first = float(errors[0][0])
        near = [a for a in probe.answers if abs(float(a[0]) - first) < 1.5]
        raise AssertionError(f"{len(errors)} errors: {errors[:5]}; around the first: {near}; "
                             f"context: {context}")
    seq = probe.sequence()
    assert seq[0] == "old" and seq[-1] == final, seq
    # Never back to the old version once the new one answered.
    assert "old" not in seq[seq.index("new"):] if "new" in seq else True, seq


def test_upgrade(repos):
    """1.0 -> 1.1 by apt-get upgrade: every step, systemd's view, zero client errors."""
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        before = guest.facts()
        since, done, probe = upgrade_watched(guest, "apt-get", "upgrade", "-y", "-q")
        assert done.returncode == 0
        after = guest.facts()
        check_upgraded(before, after, since)
        check_probe(probe)
        assert probe.counts["refused"] > 0  # IVLE's procedure: Apache stopped
        assert guest.run("dpkg", "--audit").stdout.strip() == ""


def test_reinstall_keeps_the_site_up_and_rebuilds_nothing(repos):
    """apt-get install --reinstall of the installed 1.1 (the same files): no
    client sees a refused connection, Apache is only reloaded, usrmgt keeps
    running, the jail is not rebuilt, the media version and database are
    left alone (release_needs.py)."""
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        assert guest.run("apt-get", "upgrade", "-y", "-q").returncode == 0
        mark = str(TEMPLATE / "rebuild-mark")  # a rebuild (rsync --delete) removes it
        guest.run("touch", mark, check=True)
        before = guest.facts()
        with Probe(guest, old="1.0", new="1.1") as probe:
            time.sleep(1.0)
            since = time.time()
            done = guest.run("apt-get", "install", "--reinstall", "-y", "-q", "ivle")
            print(done.stdout[-6000:], flush=True)
            time.sleep(1.0)
            probe.stop()
        assert done.returncode == 0, done.stdout[-3000:]
        after = guest.facts()
        assert probe.counts["refused"] == 0 and probe.counts["errors"] == 0, probe.line
        assert probe.sequence() == ["new"], probe.sequence()
        web = [v for u, v, _t in events(after, since) if u == "apache2"]
        assert web and set(web) <= {"Reloading", "Reloaded"}, web  # never stopped
        assert after["usrmgt_pid"] == before["usrmgt_pid"]
        assert guest.run("test", "-e", mark).returncode == 0, "the jail was rebuilt"
        assert after["media"] == before["media"] and after["dumps"] == before["dumps"]
        assert after["marker"] == before["marker"]
        status = guest.run("ivle-maint", "status", check=True).stdout
        assert "web service not stopped (reloaded on the new code)" in status, status
        assert "rebuild-jail: skipped:" in status and "media-version: skipped:" in status
        assert guest.run("dpkg", "--audit").stdout.strip() == ""


def test_upgrade_with_a_unit(repos):
    """IVLE's package with a native unit for usrmgt, dh_installsystemd given the
    options (RULES_UNIT): usrmgt restarts once, by ivle-maint after the migrations."""
    with scenario.prepared_nodes(["ivle-node"], "unit", repos) as guests:
        guest = guests["ivle-node"]
        fragment = guest.run("systemctl", "show", "-p", "FragmentPath",
                             "ivle-usrmgt-server.service", check=True).stdout.strip()
        assert fragment.endswith("/lib/systemd/system/ivle-usrmgt-server.service"), fragment
        before = guest.facts()
        since, done, probe = upgrade_watched(guest, "apt-get", "upgrade", "-y", "-q")
        assert done.returncode == 0
        postinst = guest.run("cat", "/var/lib/dpkg/info/ivle.postinst", check=True).stdout
        assert "deb-systemd-invoke start 'ivle-usrmgt-server.service'" in postinst
        # check_upgraded: usrmgt's jobs are exactly one Stopped, Started, after the migrations.
        check_upgraded(before, guest.facts(), since)
        check_probe(probe)


MAINTENANCE_ENV = ("env", "IVLE_MAINT_DURING_UPGRADE=maintenance")
# In maintenance mode Apache is never stopped: two graceful restarts.
RELOADS = ("Reloaded", "Reloaded")
SITE = "/etc/apache2/sites-enabled/ivle.conf"
MAINT_CONF = "/etc/apache2/conf-enabled/ivle-maint-maintenance.conf"


def check_maintenance_window(probe: Probe, *, final: str = "new") -> None:
    """Zero refused, zero errors; old pages, then only 503 with Retry-After, then FINAL."""
    assert probe.counts["errors"] == 0, probe.errors()[:5]
    assert probe.counts["refused"] == 0, probe.sequence()
    assert probe.sequence() == (["old", "maintenance", "new"] if final == "new"
                                else ["old", "maintenance"]), probe.sequence()


def maintenance_answer(guest: Guest) -> dict[str, object]:
    """One request from inside: status, headers and body of the site's answer."""
    code = ("import json, urllib.request, urllib.error\n"
            f"try: urllib.request.urlopen('http://127.0.0.1:{guest.ports.web}/x/y?z')\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(json.dumps({'status': e.code, 'headers': dict(e.headers),"
            " 'body': e.read().decode()}))\n")
    return dict(json.loads(guest.run("python3", "-c", code, check=True).stdout))


def test_upgrade_maintenance_mode(repos):
    """[web] during_upgrade = maintenance (from the environment, as the playbook sets it):
    zero refused connections, zero errors, every answer in the window a 503 with
    Retry-After; Apache never stopped; IVLE's site restored as it was."""
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        plan = guest.run(*MAINTENANCE_ENV, "ivle-maint", "plan", "--to", "1.1", check=True)
        assert "during the upgrade: maintenance page (503, Retry-After 300s" in plan.stdout
        before = guest.facts()
        since, done, probe = upgrade_watched(guest, *MAINTENANCE_ENV,
                                             "apt-get", "upgrade", "-y", "-q")
        assert done.returncode == 0
        assert "maintenance page up" in done.stdout and "maintenance page down" in done.stdout
        after = guest.facts()
        check_upgraded(before, after, since, web_jobs=RELOADS)
        check_maintenance_window(probe)
        assert guest.run("test", "-L", SITE).returncode == 0
        assert guest.run("test", "-e", MAINT_CONF).returncode != 0
        assert guest.run("dpkg", "--audit").stdout.strip() == ""
        # The next upgrade's estimate is this one's web-down time.
        plan = guest.run("ivle-maint", "plan", "--to", "1.2", "--during-upgrade",
                         "maintenance", check=True)
        assert "from the upgrade 1.0 -> 1.1" in plan.stdout, plan.stdout
        # Purging ivle-maint removes its Apache configuration.
        assert guest.run("test", "-e", MAINT_CONF.replace("enabled", "available")).returncode == 0
        guest.run("dpkg", "--purge", "--force-depends", "ivle-maint", check=True)
        assert guest.run("test", "-e",
                         MAINT_CONF.replace("enabled", "available")).returncode != 0


def upgrade_failing_a_migration(guest: Guest, *, web: str) -> tuple[dict, float, Probe]:
    """apt-get upgrade with 1.1's first migration failing ("badmigration"): IVLE
    half-configured, the schema as it was, Apache WEB ("active"/"inactive").
    Returns the facts before, when the upgrade started and its probe."""
    before = guest.facts()
    since, done, probe = upgrade_watched(guest, "apt-get", "upgrade", "-y", "-q")
    assert done.returncode != 0
    assert "resume with: dpkg --configure -a" in done.stdout
    failed = guest.facts()
    assert failed["ivle"] == "install ok half-configured 1.1"
    assert failed["schema_same"] is True
    assert failed["units"]["apache2.service"]["ActiveState"] == web
    return before, since, probe


def configure_with_the_migration_fixed(guest: Guest) -> tuple[float, Probe, dict]:
    """The failing migration fixed in place, dpkg --configure -a succeeds.
    Returns when it started, its probe and the facts after."""
    guest.node.write("/usr/share/ivle/userdb/migrations/20100301-01.sql", GOOD_FIRST_MIGRATION)
    since, done, probe = upgrade_watched(guest, "dpkg", "--configure", "-a")
    assert done.returncode == 0
    return since, probe, guest.facts()


def test_failed_migration_in_maintenance_mode(repos):
    """The postinst fails: the maintenance answer stays up (not a refused port, not
    IVLE's site on the old schema); dpkg --configure -a then serves the new version."""
    with scenario.prepared_nodes(["ivle-node"], "badmigration", repos) as guests:
        guest = guests["ivle-node"]
        guest.run("sh", "-c", "printf '[web]\\nduring_upgrade = maintenance\\n' "
                  ">> /etc/ivle/ivle-maint.conf", check=True)
        before, since, probe = upgrade_failing_a_migration(guest, web="active")
        check_maintenance_window(probe, final="maintenance")
        answer = maintenance_answer(guest)
        headers = {str(k).lower(): v for k, v in dict(answer["headers"]).items()}  # type: ignore[call-overload]
        assert answer["status"] == 503
        assert headers["retry-after"] == "300" and headers["cache-control"] == "no-store"
        assert headers["x-ivle-maintenance"] == "1"
        assert "IVLE is being upgraded" in str(answer["body"])
        assert guest.run("test", "-e", SITE).returncode != 0

        _since2, probe, after = configure_with_the_migration_fixed(guest)
        check_upgraded(before, after, since, web_jobs=RELOADS)
        assert probe.sequence() == ["maintenance", "new"], probe.sequence()
        assert probe.counts["errors"] == 0 and probe.counts["refused"] == 0
        assert guest.run("test", "-L", SITE).returncode == 0


def test_upgrade_maintenance_mode_full_restart(repos):
    """[web] restart = full: Apache stopped and started at each switch (nothing of
    the old server survives); zero errors, the maintenance answer in between."""
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        guest.run("sh", "-c", "printf '[web]\\nduring_upgrade = maintenance\\nrestart = full\\n' "
                  ">> /etc/ivle/ivle-maint.conf", check=True)
        before = guest.facts()
        since, done, probe = upgrade_watched(guest, "apt-get", "upgrade", "-y", "-q")
        assert done.returncode == 0
        check_upgraded(before, guest.facts(), since,
                       web_jobs=("Stopped", "Started", "Stopped", "Started"))
        check_probe(probe)
        assert probe.counts["maintenance"] > 0
        assert guest.run("test", "-L", SITE).returncode == 0


BROKEN_SOURCE = """#!/bin/sh
# An IVLE 1.1 source tree whose build fails.
if [ "$1" = --version ]; then echo 1.1; exit 0; fi
echo "setup.py $1: the build broke"; exit 1
"""


def test_abandoned_upgrade_in_maintenance_mode(repos):
    """apache2ctl configtest failing stops the upgrade before anything changes.
    The code install fails after the before-phase put the maintenance page up;
    `ivle-maint rerun --abandon` gives IVLE's site back on 1.0: the client sees
    old pages, the maintenance answer, old pages again; nothing refused."""
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        guest.node.write("/root/src/setup.py", BROKEN_SOURCE, mode="0755")
        upgrade = ("ivle-maint", "upgrade", "--during-upgrade", "maintenance", "--from", "1.0",
                   "--source", "/root/src", "--migrations", "/usr/share/ivle/userdb/migrations")
        with Probe(guest) as probe:
            time.sleep(1.0)
            # A broken Apache configuration is found before anything changes.
            guest.node.write("/etc/apache2/conf-available/broken.conf", "NoSuchDirective on\n")
            guest.run("a2enconf", "-q", "broken", check=True)
            done = guest.run(*upgrade)
            assert done.returncode != 0 and "apache2ctl configtest failed" in done.stdout, \
                done.stdout
            assert guest.run("test", "-L", SITE).returncode == 0
            assert guest.run("test", "-e", MAINT_CONF).returncode != 0
            guest.run("a2disconf", "-q", "broken", check=True)
            done = guest.run(*upgrade)
            print(done.stdout[-3000:], flush=True)
            assert done.returncode != 0 and "the build broke" in done.stdout
            assert guest.run("test", "-e", MAINT_CONF).returncode == 0
            assert guest.run("test", "-e", SITE).returncode != 0
            time.sleep(1.0)
            done = guest.run("ivle-maint", "rerun", "--abandon")
            print(done.stdout[-3000:], flush=True)
            assert done.returncode == 0 and "abandoned" in done.stdout
            time.sleep(1.0)
            probe.stop()
        assert probe.sequence() == ["old", "maintenance", "old"], probe.sequence()
        assert probe.counts["errors"] == 0 and probe.counts["refused"] == 0
        assert guest.run("test", "-L", SITE).returncode == 0
        assert guest.run("test", "-e", MAINT_CONF).returncode != 0


def test_failed_migration_then_configure(repos):
    """1.1's migration fails: IVLE half-configured, web down, no new code served;
    the file fixed in place, dpkg --configure -a finishes the upgrade."""
    with scenario.prepared_nodes(["ivle-node"], "badmigration", repos) as guests:
        guest = guests["ivle-node"]
        before, since, probe = upgrade_failing_a_migration(guest, web="inactive")
        check_probe(probe, final="refused")
        assert "new" not in probe.sequence()

        since2, probe, after = configure_with_the_migration_fixed(guest)
        assert after["ivle"] == "install ok installed 1.1"
        check_upgraded(before, after, since)
        assert probe.sequence() == ["refused", "new"], probe.sequence()
        assert probe.counts["errors"] == 0
        # The resumed run does not stop the web server again.
        assert [v for u, v, _t in events(after, since2) if u == "apache2"] == ["Started"]


def test_debhelper_default_restarts_usrmgt_before_migrations(repos):
    """The trap the fixed debian/rules avoids: with dh_installinit's default and
    the ivle-maint line below debhelper's, the new postinst would restart usrmgt
    on the new code before the migrations.  The preinst's preflight reads the
    new postinst and refuses, before anything stops: the site serves 1.0
    throughout, usrmgt keeps running, and the refusal says which line."""
    with scenario.prepared_nodes(["ivle-node"], "trap", repos) as guests:
        guest = guests["ivle-node"]
        _since, done, probe = upgrade_watched(guest, "apt-get", "upgrade", "-y", "-q")
        assert done.returncode != 0
        assert "would restart ivle-usrmgt-server before its ivle-maint line" in done.stdout
        assert "invoke-rc.d --skip-systemd-native ivle-usrmgt-server $_dh_action" in done.stdout
        after = guest.facts()
        assert after["ivle"] == "install ok installed 1.0", after["ivle"]
        assert after["schema_same"] is True
        assert after["units"]["ivle-usrmgt-server.service"]["ActiveState"] == "active"
        assert after["units"]["apache2.service"]["ActiveState"] == "active"
        # Nothing went down: every answer the old page.
        assert probe.counts["errors"] == 0 and probe.counts["refused"] == 0, probe.line
        assert probe.counts["new"] == 0 and probe.counts["maintenance"] == 0, probe.line


def slave_status_until(guest: Guest, word: str, timeout: float = 120) -> str:
    """`ivle-maint cluster status` on a slave until its own row says WORD."""
    deadline = time.monotonic() + timeout
    while True:
        out = guest.run("ivle-maint", "cluster", "status").stdout
        mine = [line for line in out.splitlines() if line.startswith(guest.node.name + " ")]
        if (mine and word in mine[0].split()) or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


@contextmanager
def probes_on_slaves(guests: dict[str, Guest]) -> Iterator[list[Probe]]:
    """A probe on every slave: a second of old answers before the body, a
    second of whatever they serve after it; each killed if anything fails."""
    with ExitStack() as stack:
        probes = [stack.enter_context(Probe(g)) for n, g in guests.items() if n != "master"]
        time.sleep(1.0)
        yield probes
        time.sleep(1.0)
        for probe in probes:
            probe.stop()


def check_cluster_upgraded(guests: dict[str, Guest], probes: list[Probe], since: float,
                           mode: str) -> tuple[dict[str, dict], float, dict[str, list]]:
    """Every node at 1.1; each slave's web server down (or reloaded) around the
    master's migrations, its probe as the mode says; one new media version.
    Returns the facts, when the last migration ran and each slave's web jobs."""
    facts = {name: guest.facts() for name, guest in guests.items()}
    assert all(f["ivle"] == "install ok installed 1.1" for f in facts.values())
    marker = facts["master"]["marker"]
    migrated = max(marker[k][1] for k in NEW_KEYS)
    slaves = [n for n in guests if n != "master"]
    webs = {}
    for name, probe in zip(slaves, probes, strict=True):
        web = webs[name] = [(v, t) for u, v, t in events(facts[name], since) if u == "apache2"]
        jobs = ["Stopped", "Started"] if mode == "stop" else list(RELOADS)
        assert [v for v, _t in web] == jobs, (name, web)
        assert web[1][1] > migrated, name
        if mode == "maintenance":
            check_maintenance_window(probe)
        else:
            check_probe(probe, context={"apache2 jobs (wall)": web, "probe start": probe.start,
                                         "wall - monotonic": time.time() - time.monotonic()})
    assert len({facts[n]["media"] for n in slaves} - {"1.0"}) == 1
    return facts, migrated, webs


@pytest.mark.parametrize("mode", ["stop", "maintenance"])
def test_cluster_apt_get_at_once(cluster, mode):
    """A master and three slaves, each its own booted node in one network
    namespace: apt-get upgrade on all four at once, in a seeded random order,
    a probe on every slave: zero errors, the schema migrated once, no slave
    serving 1.1 before the migrations, one new media version.  In maintenance
    mode the slaves go first: each answers the maintenance page (cluster status
    says so) while it waits for the master, then the master; zero refused."""
    import random
    import subprocess

    names = list(cluster)
    seed = int(os.environ.get("IVLE_MAINT_E2E_SEED") or time.time_ns() % 10_000)
    rng = random.Random(seed)
    env = ("IVLE_MAINT_DURING_UPGRADE=maintenance",) if mode == "maintenance" else ()
    with probes_on_slaves(cluster) as probes:
        order = rng.sample(names, len(names))
        if mode == "maintenance":
            order = [n for n in order if n != "master"] + ["master"]
        print(f"apt-get upgrade at once, order {', '.join(order)} (seed {seed})", flush=True)
        started = time.time()
        running = []
        for name in order:
            guest = cluster[name]
            if name == "master" and mode == "maintenance":
                status = slave_status_until(cluster["slave1"], "maintenance")
                print(status, flush=True)
                assert any(line.startswith("slave1 ") and "maintenance" in line.split()
                           for line in status.splitlines()), status
            argv = guest.node.argv("env", guest.sandbox_env, *env, "sh", "-c",
                                   "apt-get update -q >/dev/null && apt-get upgrade -y -q")
            running.append((name, subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)))
            time.sleep(rng.uniform(0, 2))
        for name, proc in running:
            out, _ = proc.communicate(timeout=600)
            print("\n".join(f"[{name}] {line}" for line in out.splitlines()
                            if line.startswith("ivle-maint")), flush=True)
            assert proc.returncode == 0, f"{name}: apt-get upgrade failed:\n{out[-3000:]}"
    facts, migrated, webs = check_cluster_upgraded(cluster, probes, started, mode)
    master = facts["master"]
    marker = master["marker"]
    assert all(k in marker and marker[k][0] != "baseline" for k in NEW_KEYS), marker
    usrmgt = [(v, t) for u, v, t in events(master, started) if u == "ivle-usrmgt-server"]
    assert [v for v, _t in usrmgt] == ["Stopped", "Started"] and usrmgt[0][1] > migrated
    assert master["template_version"] == "1.1"
    for name, web in webs.items():
        slave = facts[name]
        assert web[0][1] < slave["code_time"], name
        assert not slave["consoles"] and not slave["jail_mounts"], name
    media = {facts[n]["media"] for n in webs}
    assert len(media) == 1 and "1.0" not in media, media
    status = cluster["master"].run("ivle-maint", "cluster", "status", "--expect", "1.1")
    print(status.stdout, flush=True)
    assert status.returncode == 0


@pytest.mark.parametrize("mode", ["stop", "maintenance"])
def test_cluster_ansible_over_ssh(cluster, tmp_path, mode):
    """The same cluster upgraded by scripts/ansible/upgrade-cluster.yml over real
    SSH (openssh-server in every node, a key made here), a probe on every slave;
    in maintenance mode (-e ivle_during_upgrade=maintenance) zero refused."""
    inventory_file = playbook.inventory(cluster, tmp_path)
    extra = ["ivle_during_upgrade=maintenance"] if mode == "maintenance" else []
    with probes_on_slaves(cluster) as probes:
        started = time.time()
        done = playbook.run(cluster, inventory_file, *extra)
        print(done.stdout[-6000:], done.stderr[-3000:], flush=True)
        assert done.returncode == 0
    # Over SSH ivle-maint has the node's own capabilities, not the harness's:
    # its graceful stop must have held Apache's sockets there too (its log).
    for name, guest in cluster.items():
        warned = guest.run("sh", "-c", f"zgrep -h '{NOT_HELD}' /var/log/ivle-maint/* || true")
        assert warned.stdout.strip() == "", (name, warned.stdout)
    check_cluster_upgraded(cluster, probes, started, mode)


HOLD_DROPIN = "/etc/systemd/system/apache2.service.d/ivle-maint-hold.conf"


def test_reboot_between_unpack_and_postinst(repos):
    """The schema hold (gate 9): 1.1 unpacked (its preinst stopped Apache), then the
    node starts what its boot starts (apache2 is enabled): the hold's drop-in keeps
    apache2 from serving 1.1's code on 1.0's schema, and so do `systemctl start`,
    invoke-rc.d and `ivle-maint services start web`; `dpkg --configure -a` then
    migrates and serves 1.1, and the drop-in is gone."""
    with scenario.prepared_nodes(["ivle-node"], "good", repos) as guests:
        guest = guests["ivle-node"]
        deb = guest.run("sh", "-c", "ls /srv/repos/good/ivle_1.1*.deb",
                        check=True).stdout.split()[0]
        done = guest.run("dpkg", "--unpack", deb)
        print(done.stdout[-4000:], flush=True)
        assert done.returncode == 0
        assert guest.facts()["ivle"] == "install ok unpacked 1.1"
        assert guest.run("test", "-e", HOLD_DROPIN).returncode == 0
        status = guest.run("ivle-maint", "status", check=True).stdout
        assert "schema hold: on, the upgrade 1.0 -> 1.1 is unfinished" in status, status
        assert HOLD_DROPIN in status, status
        # What a boot does: reload the units, start everything the default target wants.
        guest.run("systemctl", "daemon-reload", check=True)
        guest.run("systemctl", "start", "multi-user.target", check=True)
        units = guest.facts()["units"]
        assert units["apache2.service"]["ActiveState"] == "failed", units  # type: ignore[index]
        log = guest.run("journalctl", "-u", "apache2", "--no-pager", "-q").stdout
        assert "schema hold: apache2 must not start" in log, log[-3000:]
        # And by hand, every way.
        for argv in (("systemctl", "start", "apache2"), ("invoke-rc.d", "apache2", "start"),
                     ("ivle-maint", "services", "start", "web")):
            again = guest.run(*argv)
            print(argv, again.returncode, again.stdout[-500:], flush=True)
            assert again.returncode != 0, argv
        with Probe(guest, count=5) as probe:
            probe.stop(wait=True)
        assert probe.sequence() == ["refused"], probe.answers
        # The postinst: migrations, then start-web lifts the hold and starts Apache.
        _since, done, probe = upgrade_watched(guest, "dpkg", "--configure", "-a")
        assert done.returncode == 0
        assert probe.sequence() == ["refused", "new"], probe.sequence()
        assert probe.counts["errors"] == 0
        after = guest.facts()
        assert after["ivle"] == "install ok installed 1.1"
        assert after["units"]["apache2.service"]["ActiveState"] == "active"  # type: ignore[index]
        assert guest.run("test", "-e", HOLD_DROPIN).returncode != 0
        assert "schema hold: off" in guest.run("ivle-maint", "status", check=True).stdout
        assert guest.run("dpkg", "--audit").stdout.strip() == ""

"""The single-node scenarios: lifecycle, upgrade, failures, reinstall, removal."""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from .config import (
    BACKUPS,
    CONF_DIR,
    E2E,
    ENV,
    GOOD_FIRST_MIGRATION,
    IVLE_CONF,
    MAINT_CONF_TEXT,
    MAINT_DIRS,
    MIGRATIONS,
    MIGRATIONS_NEW,
    NEW,
    OLD,
    SHARE,
    TEMPLATE,
)
from .harness import check, run, title, write
from .node import (
    Before,
    apt_upgrade,
    check_database_unchanged,
    check_upgraded,
    console_pids,
    dpkg_status,
    events_since,
    home_checksums,
    http_get,
    install_ivle_maint,
    install_old_ivle,
    prepare_chroot,
    processes,
    publish,
    query,
    resume_line,
    service_running,
    setup_node,
    show_status,
)

# -- removal --------------------------------------------------------------------------

def check_remove_and_purge(before: Before) -> None:
    title("remove ivle and ivle-maint, then purge both (ivle's postrm without ivle-maint)")
    run("apt-get", "remove", "-y", "-q", "ivle", "ivle-maint")
    check(dpkg_status("ivle")[0] == "deinstall ok config-files", "ivle removed")
    check(shutil.which("ivle-maint", path=ENV["PATH"]) is None, "ivle-maint removed")
    check(MAINT_DIRS["state"].exists(), "removal (not purge) keeps ivle-maint's state")
    run("dpkg", "--purge", "ivle")
    check(dpkg_status("ivle")[0] in ("", "unknown ok not-installed"),
          "ivle purged while ivle-maint is gone (postrm guard)")
    run("dpkg", "--purge", "ivle-maint")
    for name, path in MAINT_DIRS.items():
        check(not path.exists(), f"purge removed ivle-maint's {name} directory {path}")
    check(any(p.is_file() for p in BACKUPS.rglob("*")),
          f"purge kept the database dumps in {BACKUPS}")
    check(int(query("SELECT count(*) FROM login")[0][0]) == before.logins  # type: ignore[arg-type]
          and "ivle_maint_migrations" in str(query("SELECT to_regclass('ivle_maint_migrations')")),
          "the IVLE database is untouched by the purge")
    check(home_checksums() == before.homes, "every user file is still there")
    check(IVLE_CONF.exists() and (CONF_DIR / "ivle-maint.conf").exists(),
          "administrator's ivle.conf and ivle-maint.conf kept")


# -- scenarios --------------------------------------------------------------------------

def node_at_old_version() -> Before:
    prepare_chroot()
    install_ivle_maint()
    install_old_ivle()
    return setup_node()


def check_addon_scripts(output: str) -> None:
    """What dh_ivle_maint put into ivle's scripts and control, as dpkg installed them."""
    title("ivle's maintainer scripts as dh_ivle_maint and dh_installinit generated them")
    info = Path("/var/lib/dpkg/info")
    preinst, postinst = (info / "ivle.preinst").read_text(), (info / "ivle.postinst").read_text()
    check("# Automatically added by dh_ivle_maint/" in preinst
          and '"format":"ivle-maint-migrations/1"' in preinst
          and all(f'"name":"{name}.sql"' in preinst for name in MIGRATIONS_NEW),
          "the preinst carries dh_ivle_maint's manifest of the new migrations")
    ours = postinst.index("ivle-maint hook postinst")
    theirs = postinst.index("invoke-rc.d --skip-systemd-native ivle-usrmgt-server")
    check(ours < theirs, "in the postinst, ivle-maint runs before dh_installinit's usrmgt lines")
    check("restart" not in postinst[theirs:theirs + 80],
          "dh_installinit only starts usrmgt (--no-restart-after-upgrade)")
    pre_depends = run("dpkg-query", "-W", "-f=${Pre-Depends}", "ivle", show=False).stdout
    check("ivle-maint (>= " in pre_depends and "init-system-helpers" in pre_depends,
          f"${{misc:Pre-Depends}} filled: {pre_depends}")
    check("preflight checks passed" in output, "the preinst's preflight ran")


def scenario_upgrade() -> None:
    before = node_at_old_version()
    title(f"publish ivle {NEW} (two new migrations, a changed jail file); apt-get upgrade")
    publish(f"ivle_{NEW}_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode == 0, "apt-get upgrade -y succeeded", done.returncode)
    check_upgraded(before, since)
    check_addon_scripts(done.stdout)
    check_remove_and_purge(before)


def scenario_failed_migration() -> None:
    before = node_at_old_version()
    title(f"publish ivle {NEW} whose first new migration fails; apt-get upgrade")
    publish(f"ivle_{NEW}_badmigration_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode != 0, "apt-get upgrade fails", done.returncode)
    line = resume_line(done.stdout)
    check("dpkg --configure -a" in line and "ivle-maint rerun" in line,
          f"the error names the resume command: {line.strip()!r}")
    status, version = dpkg_status("ivle")
    check(status == "install ok half-configured" and version == NEW,
          f"ivle {NEW} is left half-configured", f"{status} {version}")
    check_database_unchanged(before)
    check(not service_running("apache2"),
          "web server stays stopped while the upgrade is unfinished")
    usrmgt = [e.what for e in events_since(since) if e.service == "ivle-usrmgt-server"]
    check(usrmgt == [] and service_running("ivle-usrmgt-server"),
          "usrmgt untouched: no init script ran the new code on the old schema", usrmgt)
    failed = run("ivle-maint", "status", show=False).stdout
    check("failed" in failed and "migrate" in failed, "ivle-maint status shows the failed step")
    show_status()

    title("fix the migration in place, then ivle-maint rerun and dpkg --configure -a")
    (MIGRATIONS / "20100301-01.sql").write_text(GOOD_FIRST_MIGRATION)
    run("ivle-maint", "rerun")
    check(service_running("apache2"), "ivle-maint rerun finished the upgrade (web server up)")
    web_events = len([e for e in events_since(since) if e.service == "apache2"])
    done = run("dpkg", "--configure", "-a")
    check(len([e for e in events_since(since) if e.service == "apache2"]) == web_events,
          "dpkg --configure -a completes without repeating finished steps")
    check_upgraded(before, since)


def scenario_failed_preinst() -> None:
    before = node_at_old_version()
    title(f"publish ivle {NEW} whose preinst fails after ivle-maint's hook; apt-get upgrade")
    publish(f"ivle_{NEW}_badpreinst_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode != 0, "apt-get upgrade fails", done.returncode)
    check("injected failure" in done.stdout, "the failure is the new preinst's")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD,
          f"dpkg's abort-upgrade kept ivle {OLD} installed", f"{status} {version}")
    check((SHARE / "VERSION").read_text().strip() == OLD, f"the {OLD} code is in place")
    web = [e.what for e in events_since(since) if e.service == "apache2"]
    check(web == ["stop", "start"], "web server was stopped, then started again by abort-upgrade",
          web)
    check(service_running("apache2") and http_get(8080) == "apache2",
          f"web server is back in service on {OLD}")
    check((TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip() == OLD,
          "jail template untouched")
    check_database_unchanged(before)
    show_status()

    title(f"publish the fixed ivle {NEW}; apt-get upgrade now completes")
    publish(f"ivle_{NEW}_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode == 0, "apt-get upgrade -y succeeded", done.returncode)
    check_upgraded(before, since)


def scenario_failed_preflight() -> None:
    """A new migration the checks refuse: under dpkg the preinst sees it through
    dh_ivle_maint's manifest, before anything is stopped."""
    before = node_at_old_version()
    title(f"publish ivle {NEW} with a migration ivle-maint refuses; apt-get upgrade")
    publish(f"ivle_{NEW}_badsql_all.deb")
    since = datetime.now(UTC)
    done = apt_upgrade()
    check(done.returncode != 0, "apt-get upgrade fails", done.returncode)
    check("cannot run inside a transaction" in done.stdout,
          "the preinst's preflight names the refused migration")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD,
          f"ivle {OLD} stays installed", f"{status} {version}")
    events = [f"{e.service} {e.what}" for e in events_since(since)]
    check(events == [], "nothing was stopped: the site stayed up", events)
    check(service_running("apache2") and http_get(8080) == "apache2", "web server answers")
    check(len(console_pids()) == 3, "consoles still run")
    check_database_unchanged(before)


def scenario_reinstall() -> None:
    """Remove ivle (its config files stay), install it again: dpkg then calls
    'preinst install OLD NEW' and 'postinst configure OLD'."""
    before = node_at_old_version()
    title(f"remove ivle {OLD} (config files stay), then install it again")
    run("apt-get", "remove", "-y", "-q", "ivle")
    check(dpkg_status("ivle")[0] == "deinstall ok config-files", "ivle removed, config files kept")
    done = run("apt-get", "install", "-y", "-q", "ivle", ok=False)
    check(done.returncode == 0, "apt-get install of the removed package succeeded",
          done.returncode)
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD, f"ivle {OLD} installed again",
          f"{status} {version}")
    check(run("dpkg", "--audit", show=False).stdout.strip() == "", "dpkg --audit is clean")
    check(service_running("apache2") and http_get(8080) == "apache2", "web server runs")
    check(service_running("ivle-usrmgt-server"), "user management server runs")
    check_database_unchanged(before)
    check(home_checksums() == before.homes, "every user file is intact")
    show_status()


SKIP_SNAPSHOT = ("/proc", "/sys", "/dev", "/srv/e2e", "/tmp", "/var/tmp", "/run",
                 "/var/cache/apt", "/var/lib/apt", "/var/lib/dpkg", "/var/log/apt",
                 "/var/cache/debconf", "/var/cache/ldconfig", "/etc/ld.so.cache",
                 "/var/log/dpkg.log", "/var/log/alternatives.log", "/root")


def snapshot() -> dict[str, str]:
    """path -> type of every file outside the volatile places (like piuparts)."""
    found: dict[str, str] = {}
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if not os.path.join(top, d).startswith(SKIP_SNAPSHOT)]
        for name in dirs + files:
            path = os.path.join(top, name)
            if path.startswith(SKIP_SNAPSHOT):
                continue
            found[path] = "l" if os.path.islink(path) else "d" if os.path.isdir(path) else "f"
    return found


ENABLEMENT_ROOTS = ("/etc/systemd/system/", "/var/lib/systemd/deb-systemd-helper-enabled/")


def unit_enablement(new: set[str], listed: set[str]) -> set[str]:
    """What deb-systemd-helper makes to enable the package's own units (the
    .wants symlinks, its state files) and the directories holding them;
    purge removes them (checked at the end of the lifecycle)."""
    units = {os.path.basename(p) for p in listed
             if p.endswith(".service") and "/systemd/system/" in p}
    made = {p for p in new if p.startswith(ENABLEMENT_ROOTS)
            and any(os.path.basename(p).startswith(unit) for unit in units)}
    holders = {str(parent) for p in made for parent in Path(p).parents
               if str(parent) + "/" not in ENABLEMENT_ROOTS and str(parent) in new}
    return made | holders


def scenario_lifecycle() -> None:
    """ivle-maint alone: install, upgrade, remove, purge leave nothing behind."""
    prepare_chroot()
    title("install ivle-maint: only its own files appear")
    empty = snapshot()
    install_ivle_maint()
    listed = set(run("dpkg", "-L", "ivle-maint", show=False).stdout.split())
    # dpkg names /lib/systemd/... where merged /usr has it under /usr/lib.
    listed |= {os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
               for p in listed}
    new = set(snapshot()) - set(empty)
    enabled = unit_enablement(new, listed)
    odd = sorted(p for p in new
                 if p not in listed and p not in enabled and "/__pycache__" not in p)
    check(not odd, f"install created {len(new)} paths, all the package's own, byte-code or "
                   "the enablement of its own systemd units", odd)
    check(not any(p.exists() for p in MAINT_DIRS.values()),
          "install created no state, log or run directory")
    run("ivle-maint", "--help", show=False)
    run("ivle-maint", "status")

    title("upgrade ivle-maint to a newer build")
    run("dpkg", "-i", str(E2E / "ivle-maint-next.deb"))
    status, version = dpkg_status("ivle-maint")
    check(status == "install ok installed" and "e2e" in version, f"upgraded to {version}")

    title("remove and purge ivle-maint after it has run (state, log, lock, dumps)")
    for name, path in MAINT_DIRS.items():
        write(path / f"{name}-file", f"written by ivle-maint ({name})\n")
    write(BACKUPS / "ivle-before-1.1.dump", "-- a pre-migration dump\n")
    write(CONF_DIR / "ivle-maint.conf", MAINT_CONF_TEXT)  # the administrator's file
    run("dpkg", "--remove", "ivle-maint")
    check(not Path("/usr/bin/ivle-maint").exists(), "removed: /usr/bin/ivle-maint gone")
    check(all(p.exists() for p in MAINT_DIRS.values()), "removal keeps state and logs")
    run("dpkg", "--purge", "ivle-maint")
    check(dpkg_status("ivle-maint")[0] in ("", "unknown ok not-installed"), "purged")
    for name, path in MAINT_DIRS.items():
        check(not path.exists(), f"purge removed the {name} directory {path}")
    check((BACKUPS / "ivle-before-1.1.dump").exists(), f"purge kept the dumps in {BACKUPS}")
    check((CONF_DIR / "ivle-maint.conf").exists(), "purge kept the administrator's settings")
    left = sorted(set(snapshot()) - set(empty))
    expected = {str(BACKUPS), str(BACKUPS / "ivle-before-1.1.dump"), str(CONF_DIR),
                str(CONF_DIR / "ivle-maint.conf")}
    check(set(left) == expected, "nothing else left behind after purge", set(left) - expected)
    gone = sorted(set(empty) - set(snapshot()))
    check(not gone, "nothing that was there before is missing", gone)
    others = [cmd for pid, (_s, cmd) in processes().items() if pid not in (1, os.getpid())]
    check(not others, "no process left running", others)


# -- rollback -----------------------------------------------------------------------------

def _pinned_point_shown() -> str:
    status = run("ivle-maint", "status", show=False).stdout
    return next((line for line in status.splitlines() if line.startswith("restore point")), "")


def check_rolled_back(before: Before, output: str) -> None:
    """The node as it was at OLD, by what it serves, holds and records."""
    title(f"check the node is back at {OLD}")
    status, version = dpkg_status("ivle")
    check(status == "install ok installed" and version == OLD,
          f"ivle {OLD} is installed and configured", f"{status} {version}")
    check(run("dpkg", "--audit", show=False).stdout.strip() == "", "dpkg --audit is clean")
    check((SHARE / "VERSION").read_text().strip() == OLD, f"the {OLD} code is in place")
    check((TEMPLATE / "usr/lib/ivle/VERSION").read_text().strip() == OLD,
          f"the jail template is {OLD}'s again")
    check(service_running("apache2") and http_get(8080) == "apache2",
          "web server runs and answers")
    check(service_running("ivle-usrmgt-server"), "user management server runs")
    lines = [line for line in output.splitlines()
             if re.match(r"ivle-maint:\s+(pass|FAIL)\s", line)]
    check(lines and not any(re.match(r"ivle-maint:\s+FAIL", line) for line in lines),
          f"every check of ivle-maint's table passed ({len(lines)})", lines)
    check(home_checksums() == before.homes, "every user file is intact")
    check(_pinned_point_shown() == "", "the restore point is no longer pinned")


def scenario_rollback() -> None:
    """1.0 -> 1.1 completes; users write; the release is bad: a full rollback
    (1.1's first migration changes rows) names the rows it would lose, and
    only --accept-data-loss carries it out, through dpkg."""
    before = node_at_old_version()
    title(f"publish ivle {NEW}; apt-get upgrade keeps a restore point")
    publish(f"ivle_{NEW}_all.deb")
    check(apt_upgrade().returncode == 0, "apt-get upgrade -y succeeded")
    shown = _pinned_point_shown()
    check(f"of {OLD} -> {NEW} (pinned" in shown and "package" in shown
          and "database dump" in shown and "jail template" in shown,
          f"ivle-maint status shows the pinned restore point: {shown!r}")

    title("users write after the upgrade")
    query("INSERT INTO login (login, unixid, admin, nick, fullname, theme) "
          "VALUES ('frank', 5006, false, 'frank', 'Frank', 'dark')")

    title("ivle-maint rollback alone: the way back and what it would lose; nothing changes")
    done = run("ivle-maint", "rollback", ok=False)
    check(done.returncode == 1, "it refuses without --accept-data-loss", done.returncode)
    check("full:" in done.stdout and "20100301-01" in done.stdout,
          "it says why the way back is full (the destructive migration)")
    check("would be lost: " in done.stdout and "login" in done.stdout,
          "it names the table whose rows would be lost")
    check(dpkg_status("ivle") == ("install ok installed", NEW) and service_running("apache2"),
          f"{NEW} stays installed and serving")

    title("ivle-maint rollback --accept-data-loss")
    done = run("ivle-maint", "rollback", "--accept-data-loss", timeout=300)
    check_rolled_back(before, done.stdout)
    check_database_unchanged(before)
    kept = query("SELECT datname FROM pg_database WHERE datname LIKE %s", ("ivle_failed_%",))
    check(len(kept) == 1, "the replaced database is kept, renamed", kept)


def scenario_rollback_failed_migration() -> None:
    """1.1's migration fails in the postinst: ivle 1.1 half-configured, the
    site down.  Nothing was migrated, so the way back is code only."""
    before = node_at_old_version()
    title(f"publish ivle {NEW} whose first new migration fails; apt-get upgrade")
    publish(f"ivle_{NEW}_badmigration_all.deb")
    check(apt_upgrade().returncode != 0, "apt-get upgrade fails")
    check(dpkg_status("ivle") == ("install ok half-configured", NEW),
          f"ivle {NEW} is left half-configured")
    title("ivle-maint rollback: code only, from the failed step")
    done = run("ivle-maint", "rollback", timeout=300)
    check("code only" in done.stdout, "the way back is code only: nothing was migrated")
    check_rolled_back(before, done.stdout)
    check_database_unchanged(before)

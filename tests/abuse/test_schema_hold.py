"""Gate 9, the schema hold: never new code on an old schema, never old code on
a new one, whoever starts the web server (gates/schema_hold.py).

Real processes on sandbox nodes (no systemd here: ivle-maint's own starts
and `ivle-maint hold check`, the command systemd's drop-in runs); the
booted scenario test_reboot_between_unpack_and_postinst covers systemd.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuse_helpers import one_error_line
from ivle_maint import cli as ivle_cli
from ivle_maint.journal import ABORTED, ABORTING, COMPLETE, IN_PROGRESS, Journal, StepRecord
from upgrade_helpers import REPO, cli, journal, postinst, preinst, unpack

pytestmark = [pytest.mark.needs_root]

WEB = "apache2"


def web_events(node) -> list[str]:
    return [event for _t, _s, event in node.service_events(WEB)]


# -- services start web in the middle of an upgrade ---------------------------------

@pytest.mark.needs_postgres
def test_services_start_web_mid_upgrade_is_refused_until_start_web(site):
    assert preinst(site).returncode == 0
    assert not site.service_running(WEB)
    for args in (("services", "start", "web"), ("services", "restart", "web"),
                 ("services", "start"), ("hold", "check")):
        done = cli(site, *args)
        assert done.returncode == 1, (args, done.stderr)
        line = one_error_line(done)
        assert "schema hold: apache2 must not start: the upgrade 1.0 -> 1.1 is unfinished" \
            in line, line
        assert not site.service_running(WEB), args
    status = cli(site, "status", check=True).stdout
    assert "schema hold: on, the upgrade 1.0 -> 1.1 is unfinished" in status, status
    assert "start" not in web_events(site)[1:]  # only the sandbox's own first start
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert site.service_running(WEB)
    assert cli(site, "hold", "check").returncode == 0
    assert "schema hold: off" in cli(site, "status", check=True).stdout
    assert cli(site, "services", "restart", "web").returncode == 0


@pytest.mark.needs_postgres
def test_rerun_abandon_gives_the_site_back_through_the_hold(site):
    assert preinst(site).returncode == 0
    assert cli(site, "hold", "check").returncode == 1
    done = cli(site, "rerun", "--abandon")
    assert done.returncode == 0, done.stderr
    assert site.service_running(WEB)
    assert cli(site, "hold", "check").returncode == 0
    assert cli(site, "services", "start", "web").returncode == 0


# -- the after-phase re-checks the before-phase ------------------------------------

@pytest.mark.needs_postgres
def test_jails_consoles_and_web_started_between_the_phases_are_undone_before_migrating(site):
    assert preinst(site).returncode == 0
    site.mount_all()
    consoles = site.start_consoles(2)
    # By hand, behind ivle-maint's back: the init script itself.
    assert site.service(WEB, "start").returncode == 0
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "stop the web server: apache2 was started again since the before-phase stopped " \
           "it: doing it again" in err, err
    assert "stop python-console processes: " in err and " processes in users' jails since " \
           "the before-phase" in err, err
    assert "unmount user jails: " in err and "jail mounts mounted again since the " \
           "before-phase" in err, err
    assert not any(os.path.exists(f"/proc/{pid}") and
                   Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" for pid in consoles)
    steps = journal(site)["steps"]
    migrated = steps["migrate"]["started"]
    for name in ("stop-web", "stop-consoles", "unmount-jails"):
        assert steps[name]["status"] == "done" and steps[name]["finished"] < migrated, name
    assert steps["unmount-jails"]["metrics"]["jails_unmounted"] > 0
    assert steps["stop-consoles"]["metrics"]["consoles_stopped"] >= 2
    # stop (before-phase), start (by hand), stop (re-check), start (start-web).
    assert web_events(site)[-4:] == ["stop", "start", "stop", "start"], web_events(site)
    assert site.service_running(WEB)


@pytest.mark.needs_postgres
def test_after_phase_trusts_nothing_yet_redoes_nothing_that_held(site):
    assert preinst(site).returncode == 0
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert "doing it again" not in done.stderr
    assert web_events(site)[-2:] == ["stop", "start"]


# -- the hold check's answer over journal states -------------------------------------

STATES = (IN_PROGRESS, ABORTING, COMPLETE, ABORTED)
STEP_NAMES = ("stop-web", "stop-consoles", "unmount-jails", "migrate", "start-web")


def hold_check(conf: Path) -> tuple[int, str]:
    """`ivle-maint --config CONF hold check` in this process: (status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = ivle_cli.main(["--config", str(conf), "hold", "check"])
    return status, err.getvalue()


def one_line(err: str) -> bool:
    """One error line (and the resume line)."""
    return len([x for x in err.splitlines() if x.startswith("ivle-maint: error:")]) == 1 \
        and all(x.startswith("ivle-maint: ") for x in err.splitlines())


def node_conf(root: Path) -> Path:
    conf = root / "maint.conf"
    conf.write_text(f"[node]\nrole = slave\n[paths]\nstate = {root / 'state'}\n"
                    f"[web]\napache_dir = {root / 'apache2'}\n")
    return conf


def write_journals(root: Path, found: list[tuple[str, dict[str, str]]]) -> list[Journal]:
    made = []
    for i, (state, steps) in enumerate(found):
        j = Journal(Journal.file_for(root / "state", f"1.{i}", f"1.{i + 1}"), f"1.{i}",
                    f"1.{i + 1}", "slave", state=state, created=1000.0 + i)
        j.steps = {name: StepRecord(status, 1.0) for name, status in steps.items()}
        j.save()
        made.append(j)
    return made


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STATES),
                          st.dictionaries(st.sampled_from(STEP_NAMES),
                                          st.sampled_from(("running", "done", "failed")),
                                          max_size=5)), max_size=3),
       st.booleans())
def test_hold_check_holds_while_any_journal_is_unfinished(found, maintenance_only):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        conf = node_conf(root)
        write_journals(root, found)
        if maintenance_only:  # stop-web's maintenance page up, IVLE's site disabled
            (root / "state").mkdir(exist_ok=True)
            (root / "state" / "maintenance.json").write_text('{"disabled": [], "since": 0}')
        status, err = hold_check(conf)
        unfinished = any(state in (IN_PROGRESS, ABORTING) for state, _ in found)
        if unfinished and not maintenance_only:
            assert status == 1 and one_line(err) and "schema hold:" in err, err
        else:
            assert status == 0 and err == "", err


def test_start_web_releases_only_its_own_upgrade(tmp_path):
    conf = node_conf(tmp_path)
    first, _second = write_journals(tmp_path, [(IN_PROGRESS, {"stop-web": "done"}),
                                              (IN_PROGRESS, {"stop-web": "done"})])
    release = tmp_path / "state" / "schema-hold.json"
    release.write_text(json.dumps({"released": f"{first.path.name}@{first.created!r}"}))
    status, err = hold_check(conf)
    assert status == 1 and "1.1 -> 1.2" in err
    sites = tmp_path / "apache2" / "sites-enabled"
    sites.mkdir(parents=True)
    (tmp_path / "state" / "maintenance.json").write_text('{"disabled": ["ivle"], "since": 0}')
    assert hold_check(conf)[0] == 0  # only the maintenance page would answer
    (sites / "ivle.conf").write_text("")  # an administrator enabled IVLE's site again
    assert hold_check(conf)[0] == 1


@pytest.mark.parametrize("damage", [b"", b"{", b"\xff"])
def test_a_damaged_journal_or_release_keeps_the_hold_on(tmp_path, damage):
    conf = node_conf(tmp_path)
    (j,) = write_journals(tmp_path, [(COMPLETE, {})])
    j.path.write_bytes(damage)
    status, err = hold_check(conf)
    assert status == 1 and one_line(err) and "unreadable journal" in err, err
    j.path.unlink()
    write_journals(tmp_path, [(IN_PROGRESS, {})])
    (tmp_path / "state" / "schema-hold.json").write_bytes(damage)
    status, err = hold_check(conf)
    assert status == 1 and one_line(err) and "unreadable" in err, err


def test_hold_check_as_systemd_runs_it(tmp_path):
    """A real process, no environment but PATH, as ExecStartPre runs it."""
    conf = node_conf(tmp_path)
    write_journals(tmp_path, [(IN_PROGRESS, {"stop-web": "done", "migrate": "failed"})])
    argv = [sys.executable, "-m", "ivle_maint", "--config", str(conf), "hold", "check"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ivle-maint: error: schema hold: apache2 must not start: "
                                  "the upgrade 1.0 -> 1.1 is unfinished (in-progress, migrate "
                                  "failed)"), done.stderr

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
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ivle_maint import cli as ivle_cli
from ivle_maint.journal import (
    ABORTED,
    ABORTING,
    COMPLETE,
    DONE,
    IN_PROGRESS,
    Journal,
    StepRecord,
)
from ivle_sandbox.releases import NEW, OLD, RELEASES
from support.abuse_helpers import (
    error_lines,
    kill_when,
    old_site_untouched,
    one_error_line,
    reference_state,
    resume_line,
)
from support.source_tree import source_tree
from support.upgrade_helpers import (
    REPO,
    at_version_1_0,
    cli,
    final_state,
    home_checksums,
    journal,
    postinst,
    preinst,
    set_setting,
    start_cli,
    stubborn_console,
    unpack,
    wait_for_step,
)

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
    plan = cli(site, "plan", "--from", "1.0", "--to", "1.1", check=True).stdout
    assert "schema hold: on, the upgrade 1.0 -> 1.1 is unfinished" in plan, plan
    assert "start" not in web_events(site)[1:]  # only the sandbox's own first start
    unpack(site)
    done = postinst(site)
    assert done.returncode == 0, done.stderr
    assert site.service_running(WEB)
    assert cli(site, "hold", "check").returncode == 0
    assert "schema hold: off" in cli(site, "status", check=True).stdout
    assert cli(site, "services", "restart", "web").returncode == 0


@pytest.mark.needs_postgres
def test_a_failed_postinst_keeps_the_hold_until_the_upgrade_completes(site):
    assert preinst(site).returncode == 0
    unpack(site, migrations={**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"})
    assert postinst(site).returncode == 1
    done = cli(site, "services", "start", "web")
    assert done.returncode == 1 and "(in-progress, migrate failed)" in one_error_line(done)
    assert not site.service_running(WEB)
    unpack(site)  # the corrected package
    assert postinst(site).returncode == 0
    assert site.service_running(WEB) and cli(site, "hold", "check").returncode == 0


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
        # Unrelated upgrades (1.0 -> 1.1, 1.2 -> 1.3): a later one from an
        # earlier one's NEW carries it on (its own test below).
        old, new = f"1.{2 * i}", f"1.{2 * i + 1}"
        j = Journal(Journal.file_for(root / "state", old, new), old, new, "slave",
                    state=state, created=1000.0 + i)
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
    assert status == 1 and "1.2 -> 1.3" in err
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
    assert status == 1 and one_line(err) and "damaged journal" in err, err
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


# -- never the after-phase on the old code ---------------------------------------------

@pytest.fixture
def reference(node_factory):
    """What an uninterrupted dpkg upgrade 1.0 -> 1.1 leaves (one per worker)."""
    return reference_state(node_factory, users=4, consoles=1)


def kill_during(node, step: str, *args: str) -> None:
    proc = start_cli(node, *args)
    wait_for_step(node, step, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


@pytest.mark.needs_postgres
@pytest.mark.parametrize("form", ["source", "dpkg"])
def test_killed_before_phase_rerun_never_runs_the_after_phase(node_factory, reference, form):
    node = at_version_1_0(node_factory(users=4, consoles=1))
    homes = home_checksums(node)
    tree = source_tree(node, RELEASES["1.1"]) if form == "source" else None
    set_setting(node, "consoles", "term_timeout", "30")
    stubborn = stubborn_console(node)
    if form == "source":
        kill_during(node, "stop-consoles", "upgrade", "--from", "1.0", "--source", str(tree))
    else:
        kill_during(node, "stop-consoles", "hook", "--package-version", "1.1", "preinst",
                    "upgrade", "1.0", "1.1")
    set_setting(node, "consoles", "term_timeout", "1")

    done = cli(node, "rerun")
    assert done.returncode == 1, done.stderr
    [error] = error_lines(done)
    assert "1.1's code is not installed" in error and "web server stays down" in error
    resume = resume_line(done.stderr)
    if form == "source":
        assert resume.startswith(f"ivle-maint upgrade --from 1.0 --to 1.1 --source {tree} ")
    else:
        assert resume.startswith("install 1.1's code, then: ivle-maint hook --package-version "
                                 "1.1 postinst configure 1.0 ")
    assert resume.endswith("(or give the site back on 1.0: ivle-maint rerun --abandon)")
    old_site_untouched(node)
    assert journal(node)["steps"]["unmount-jails"]["status"] == "done"
    assert not node.service_running("apache2")
    assert stubborn.wait(timeout=10) == -signal.SIGKILL

    # The printed command installs the code and ends like an uninterrupted run.
    if form == "source":
        finished = cli(node, *resume.split("   ")[0].split()[1:])
    else:
        unpack(node)
        finished = postinst(node)
    assert finished.returncode == 0, finished.stderr
    state = final_state(node)
    assert state == reference
    assert home_checksums(node) == homes


@pytest.mark.needs_postgres
def test_killed_preinst_rerun_abandon_gives_the_site_back(node_factory, reference):
    node = at_version_1_0(node_factory(users=4, consoles=1))
    set_setting(node, "consoles", "term_timeout", "30")
    stubborn = stubborn_console(node)
    kill_during(node, "stop-consoles", "hook", "preinst", "upgrade", "1.0", "1.1")
    set_setting(node, "consoles", "term_timeout", "1")
    assert not node.service_running("apache2")

    done = cli(node, "rerun", "--abandon")
    assert done.returncode == 0, done.stderr
    assert "upgrade 1.0 -> 1.1 abandoned, the site is back on 1.0" in done.stderr
    assert node.service_running("apache2") and journal(node)["state"] == "aborted"
    old_site_untouched(node)
    again = cli(node, "rerun")  # abandoned is not unfinished
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert node.service_running("apache2")
    old_site_untouched(node)
    stubborn.kill()
    # dpkg's next attempt runs the whole upgrade.
    assert preinst(node).returncode == 0
    unpack(node)
    assert postinst(node).returncode == 0
    assert final_state(node) == reference


def write_dpkg_status(admindir: Path, status: str, version: str) -> None:
    (admindir / "info").mkdir(parents=True, exist_ok=True)
    (admindir / "updates").mkdir(exist_ok=True)
    (admindir / "status").write_text(
        f"Package: ivle\nStatus: {status}\nPriority: optional\nSection: web\n"
        f"Maintainer: IVLE <ivle@example.org>\nArchitecture: all\nVersion: {version}\n"
        "Description: IVLE\n\n"
    )


@pytest.mark.needs_postgres
def test_dpkg_record_of_the_old_version_stops_the_rerun(node_factory, tmp_path, monkeypatch):
    node = at_version_1_0(node_factory(users=3, consoles=1))
    # dpkg killed with its preinst: the package stays half-installed at 1.0.
    write_dpkg_status(tmp_path, "install reinstreq half-installed", "1.0")
    monkeypatch.setenv("DPKG_ADMINDIR", str(tmp_path))
    set_setting(node, "consoles", "term_timeout", "30")
    stubborn = stubborn_console(node)
    kill_during(node, "stop-consoles", "hook", "preinst", "upgrade", "1.0", "1.1")
    set_setting(node, "consoles", "term_timeout", "1")
    done = cli(node, "rerun")
    assert done.returncode == 1
    [error] = error_lines(done)
    assert "(dpkg has ivle 1.0 half-installed)" in error
    assert resume_line(done.stderr).startswith("apt-get install ivle=1.1 ")
    old_site_untouched(node)
    stubborn.kill()


@pytest.mark.needs_postgres
def test_rerun_says_dpkg_configure_is_still_owed(node_factory, reference, tmp_path,
                                                 monkeypatch):
    node = at_version_1_0(node_factory(users=4, consoles=1))
    assert preinst(node).returncode == 0
    unpack(node)
    # dpkg died after the unpack, before the postinst: ivle 1.1 unpacked.
    write_dpkg_status(tmp_path, "install ok unpacked", "1.1")
    monkeypatch.setenv("DPKG_ADMINDIR", str(tmp_path))
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stderr
    assert ("ivle-maint: warning: dpkg has not finished configuring ivle (dpkg has ivle 1.1 "
            "unpacked): run dpkg --configure -a") in done.stderr
    assert final_state(node) == reference
    assert "already complete" in postinst(node).stderr


@pytest.mark.needs_postgres
def test_removing_ivle_maint_mid_upgrade_is_refused_so_the_hold_stays(site, tmp_path):
    """ivle-maint's prerm: its postrm takes the hold's drop-in away (without
    ivle-maint its check could never pass), so a removal while an upgrade is
    unfinished would let the next boot serve IVLE's code on the wrong schema."""
    repo = Path(__file__).resolve().parents[2]
    wrapper = tmp_path / "ivle-maint"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m ivle_maint \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, **site.env, "PYTHONPATH": str(repo), "IVLE_MAINT": str(wrapper),
           "IVLE_MAINT_SETTINGS": str(site.maint_conf)}

    def prerm() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(repo / "debian" / "ivle-maint.prerm"), "remove"],
                              env=env, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)

    assert prerm().returncode == 0  # nothing unfinished
    assert preinst(site).returncode == 0
    refused = prerm()
    assert refused.returncode == 1
    first, advice = refused.stderr.splitlines()
    assert first.startswith("ivle-maint: not removed: ivle-maint: error: schema hold: ")
    assert "ivle-maint rerun --abandon" in advice
    assert cli(site, "rerun", "--abandon").returncode == 0
    assert prerm().returncode == 0


@pytest.mark.needs_postgres
def test_a_fixed_package_over_a_failed_postinst_completes_and_lifts_the_hold(site):
    """1.1's postinst failed in migrate (its migration is broken); dpkg then
    installs the fixed 1.2 over the half-configured 1.1.  The 1.2 upgrade
    applies every pending migration and starts the web server: the hold of
    the 1.0 -> 1.1 upgrade it carried on must not keep the site down for ever
    (start-web refused, every rerun 'several unfinished upgrades')."""
    failing = {**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"}
    assert preinst(site).returncode == 0
    unpack(site, migrations=failing)
    assert postinst(site).returncode == 1
    assert cli(site, "hold", "check").returncode == 1
    assert preinst(site, "1.1", "1.2").returncode == 0
    unpack(site, "1.2", migrations=RELEASES["1.1"])
    done = postinst(site, "1.1", "1.2")
    assert done.returncode == 0, done.stderr
    assert site.service_running(WEB)
    assert cli(site, "hold", "check").returncode == 0
    assert cli(site, "rerun").returncode == 0  # nothing unfinished, not "several"


def test_a_later_upgrade_from_its_new_version_supersedes_an_unfinished_one(tmp_path):
    """The pure rule (Journal.unfinished): carried on by a later upgrade from
    its NEW that is under way or complete; unfinished again when that one
    is abandoned."""
    state = tmp_path
    first = Journal.open(state, "1.0", "1.1", "both")
    first.save()
    later = Journal.open(state, "1.1", "1.2", "both")
    for status, expect in ((IN_PROGRESS, ["1.2"]), (COMPLETE, []),
                           (ABORTING, ["1.1", "1.2"]), (ABORTED, ["1.1"])):
        later.set_state(status)
        assert [j.new for j in Journal.unfinished(state)] == expect, status


@pytest.mark.needs_postgres
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lost_at=st.sampled_from(["stop-web", "stop-consoles", "unmount-jails", "baseline", None]),
       other=st.sampled_from(["1.2", "1:1.0", "1.1~rc1"]), unwound=st.booleans())
@example(lost_at=None, other="1.2", unwound=True)
@example(lost_at="unmount-jails", other="1:1.0", unwound=False)
def test_a_preinst_dpkg_lost_then_another_version_from_the_same_old_gives_the_site_back(
        node_factory, lost_at, other, unwound):
    """dpkg lost after 1.1's preinst (SIGKILL at a generated step, or after
    it: a power cut, Ctrl-C, no unwind) keeps 1.0; the next preinst is
    `upgrade 1.0 OTHER`.  That upgrade takes the first one over: completed,
    its start-web lifts the hold; unwound by dpkg, its abort gives the site
    back, and 1.1's upgrade later runs anew and completes.  Before: both
    journals held each other (start-web and every abort refused for ever,
    every rerun 'several unfinished upgrades')."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    if lost_at is None:
        assert preinst(node).returncode == 0
    else:
        proc = start_cli(node, "hook", "preinst", "upgrade", "1.0", "1.1")
        kill_when(proc, lambda: journal(node).get("steps", {}).get(lost_at, {}).get("status")
                  in ("running", "done"), timeout=60, poll=0.002)
    done = preinst(node, "1.0", other)
    assert done.returncode == 0, done.stdout + done.stderr
    if unwound:  # dpkg's unwind, as if the preinst had failed after its last step
        for call in (["postrm", "abort-upgrade", "1.0", other],
                     ["--package-version", "1.0", "postinst", "abort-upgrade", other]):
            done = cli(node, "hook", *call)
            assert done.returncode == 0, done.stdout + done.stderr
        assert node.service_running(WEB) and cli(node, "hold", "check").returncode == 0
        assert "nothing to do" in cli(node, "rerun", check=True).stderr
        other = "1.1"
        assert preinst(node).returncode == 0
    unpack(node, other, migrations=RELEASES["1.1"])
    done = postinst(node, "1.0", other)
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.service_running(WEB) and cli(node, "hold", "check").returncode == 0
    assert final_state(node)["marker"] == sorted(k.removesuffix(".sql") for k in RELEASES["1.1"])
    assert "nothing to do" in cli(node, "rerun", check=True).stderr


@given(state=st.sampled_from([IN_PROGRESS, COMPLETE, ABORTING, ABORTED]),
       code_new=st.booleans())
@settings(max_examples=20, deadline=None)
def test_a_later_upgrade_from_the_same_old_takes_an_unfinished_one_over(state, code_new):
    """The pure rule (Journal.unfinished, taken_over): a later upgrade from
    the same OLD, under way, complete or being abandoned, carries on the
    before-phase of one whose code never came; abandoned, it carries nothing."""
    with tempfile.TemporaryDirectory() as directory:
        first = Journal.open(Path(directory), "1.0", "1.1", "both")
        first.code_new = code_new
        first.steps["stop-web"] = StepRecord(DONE, 1.0)
        first.save()
        later = Journal.open(Path(directory), "1.0", "1.2", "both")
        later.set_state(state)
        unfinished = [j.new for j in Journal.unfinished(Path(directory))]
        expect = (["1.1"] if code_new or state == ABORTED else []) + \
            (["1.2"] if later.is_unfinished else [])
        assert unfinished == expect


@pytest.mark.needs_postgres
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(settings_file=st.booleans(),
       form=st.one_of(st.just(["remove"]), st.tuples(
           st.just("remove"), st.just("in-favour"),
           st.from_regex(r"[a-z0-9][a-z0-9+.-]{1,20}", fullmatch=True),
           st.from_regex(r"([1-9]:)?[0-9][0-9a-z.+~]{0,12}(-[0-9a-z.+~]{1,6})?",
                         fullmatch=True)).map(list)))
def test_removing_ivle_maint_mid_upgrade_is_refused_whether_or_not_it_has_a_settings_file(
        site, tmp_path, settings_file, form):
    """Every setting is optional, and installing creates no settings file:
    the hooks run an upgrade on the defaults.  ivle-maint's prerm (`remove`,
    or `remove in-favour PACKAGE VERSION` for a package replacing it) asks
    the hold whether or not the file exists.  Before: without the file it
    asked nothing, and the postrm took the hold's drop-in away mid-upgrade."""
    wrapper = tmp_path / "ivle-maint"
    if not wrapper.exists():
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m ivle_maint \"$@\"\n")
        wrapper.chmod(0o755)
        assert preinst(site).returncode == 0
    # Without the file, ivle-maint's own default (IVLE_MAINT_CONF here) stands for
    # the defaults it runs on.
    env = {**os.environ, **site.env, "PYTHONPATH": str(REPO), "IVLE_MAINT": str(wrapper),
           "IVLE_MAINT_SETTINGS": str(site.maint_conf if settings_file
                                      else tmp_path / "no-such-ivle-maint.conf")}
    refused = subprocess.run(["sh", str(REPO / "debian" / "ivle-maint.prerm"), *form],
                             env=env, capture_output=True, text=True, check=False,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("ivle-maint: not removed: ivle-maint: error: schema hold: ")


@pytest.mark.needs_postgres
@settings(max_examples=2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(other=st.sampled_from(["1.2", "1:1.0"]))
def test_a_killed_abandonment_of_the_later_upgrade_is_finished_by_one_rerun(node_factory, other):
    """dpkg lost after 1.1's preinst; 1.0 -> OTHER's preinst ran, and dpkg's
    unwind (`postrm abort-upgrade 1.0 OTHER`) was SIGKILLed while it gave the
    site back.  One rerun finishes it and abandons 1.0 -> 1.1 with it, as
    the unwind would have: the site up, the hold off.  Before: 1.0 -> 1.1
    was unfinished again, its hold on, and the next rerun ran its
    before-phase, saying the web server stays down."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    assert preinst(node).returncode == 0
    assert preinst(node, "1.0", other).returncode == 0
    node.set_fakes(WEB, delay=30)  # the undo (start-web) takes long
    proc = start_cli(node, "hook", "postrm", "abort-upgrade", "1.0", other)
    kill_when(proc, lambda: journal(node, "1.0", other).get("state") == "aborting",
              timeout=60, poll=0.002)
    node.set_fakes(WEB, delay=0)
    done = cli(node, "rerun")
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.service_running(WEB) and cli(node, "hold", "check").returncode == 0
    assert "nothing to do" in cli(node, "rerun", check=True).stderr
    assert journal(node)["state"] == journal(node, "1.0", other)["state"] == "aborted"


@pytest.mark.needs_postgres
def test_several_unfinished_upgrades_are_named_with_the_reruns_that_continue_each(site):
    """1.1's postinst failed; the fixed 1.2's preinst carried its upgrade on,
    then the abandonment of 1.1 -> 1.2 was killed: both upgrades are
    unfinished.  `rerun` advised `--from/--to`, which rerun did not take
    (a usage error), so nothing the message said could be run.  Now it
    names a rerun for each, and each does what it says."""
    failing = {**OLD, **NEW, "20100215.sql": "SELECT 1 / 0;\n"}
    assert preinst(site).returncode == 0
    unpack(site, migrations=failing)
    assert postinst(site).returncode == 1
    assert preinst(site, "1.1", "1.2").returncode == 0
    # Carried on: `status` says by which (it said "in-progress" alone).
    shown = cli(site, "status", check=True).stdout.splitlines()
    assert "upgrade 1.0 -> 1.1: in-progress (carried on by the upgrade 1.1 -> 1.2)" in shown
    assert "upgrade 1.1 -> 1.2: in-progress" in shown
    proc = start_cli(site, "rerun", "--abandon")
    kill_when(proc, lambda: journal(site, "1.1", "1.2").get("state") == ABORTING, timeout=60,
              poll=0.002)
    done = cli(site, "rerun")
    assert done.returncode == 1
    line = one_error_line(done)
    assert "1.0 -> 1.1, 1.1 -> 1.2 being abandoned" in line, line
    assert "'ivle-maint rerun --from 1.0 --to 1.1'" in line, line
    assert "'ivle-maint rerun --from 1.1 --to 1.2'" in line, line
    assert resume_line(done.stderr) == "ivle-maint rerun --from 1.1 --to 1.2"
    done = cli(site, "rerun", "--from", "1.1", "--to", "1.2")
    assert done.returncode == 0, done.stderr
    assert journal(site, "1.1", "1.2")["state"] == ABORTED
    # As the abandoned upgrade found the site: down, held for 1.0 -> 1.1.
    assert "apache2 stays down: the upgrade 1.0 -> 1.1 is unfinished" in done.stderr
    assert not site.service_running(WEB)
    assert cli(site, "hold", "check").returncode == 1
    done = cli(site, "rerun", "--from", "1.1", "--to", "1.2")
    assert done.returncode == 2 and "no unfinished upgrade from 1.1 to 1.2" in \
        one_error_line(done)
    done = cli(site, "rerun")  # the one left: 1.0 -> 1.1, whose migration still fails
    assert done.returncode == 1 and "20100215" in done.stderr, done.stderr
    assert journal(site)["state"] == IN_PROGRESS


# -- IVLE's site enabled under a link of another name ---------------------------------

LINK_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                     min_size=1, max_size=40).filter(lambda n: n not in ("ivle", ".", "..")
                                         and not n.startswith("."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LINK_NAMES, st.sampled_from(("relative", "absolute", "chain")))
def test_ivle_site_enabled_under_another_name_holds_and_is_refused_before_anything_stops(
        name, how):
    """Apache includes every sites-enabled/*.conf: IVLE's site linked there as
    010-ivle.conf (by hand, not a2ensite) is enabled as surely as ivle.conf.
    Before: the hold took the maintenance page for all Apache would answer
    (it looked for sites-enabled/ivle.conf only), and stop-web's a2dissite
    left the link: Apache reloaded with IVLE's site beside the page."""
    from ivle_maint.config import load_settings
    from ivle_maint.errors import MaintError
    from ivle_maint.services import maintenance_page

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        conf = node_conf(root)
        write_journals(root, [(IN_PROGRESS, {"stop-web": "done"})])
        available = root / "apache2" / "sites-available"
        enabled = root / "apache2" / "sites-enabled"
        available.mkdir(parents=True)
        enabled.mkdir()
        (available / "ivle.conf").write_text("<VirtualHost *:80>\n</VirtualHost>\n")
        link = enabled / f"{name}.conf"
        target = {"relative": Path("../sites-available/ivle.conf"),
                  "absolute": available / "ivle.conf"}.get(how)
        if target is None:  # a link to a link of sites-available
            (available / "ivle-alias.conf").symlink_to("ivle.conf")
            target = Path("../sites-available/ivle-alias.conf")
        link.symlink_to(target)
        (root / "state" / "maintenance.json").write_text('{"disabled": [], "since": 0}')
        status, err = hold_check(conf)
        assert status == 1 and one_line(err) and "schema hold:" in err, err
        with pytest.raises(MaintError) as refused:
            maintenance_page.preflight(load_settings(str(conf)), maintenance_page.MAINTENANCE)
        message = str(refused.value)
        assert "a2dissite" in message and "\n" not in message, message

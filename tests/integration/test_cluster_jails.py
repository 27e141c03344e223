"""One jail tree for the whole cluster: the slaves wait for the master's rebuild
of it, and the master waits for the slaves to let go of it.

The sandbox cluster shares the master's jails/ with every slave (a bind
mount standing in for NFS), as a real IVLE site does.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ivle_sandbox.cluster import build_cluster, configure
from ivle_sandbox.releases import RELEASES
from support.cluster_helpers import (
    PATIENT,
    assert_slaves_after_master,
    assert_upgraded,
    finished_at,
    journal_steps,
    node_rows,
    wait_rows,
)
from support.upgrade_helpers import (
    RESUME_LINE,
    cli,
    postinst,
    preinst,
    set_setting,
    start_cli,
    unpack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]

IMPATIENT = {"master_timeout": 1.5, "slaves_timeout": 1.5}


def test_the_slaves_share_the_masters_jail_tree(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=PATIENT)
    marker = cluster.master.template / "etc" / "shared-check"
    marker.write_text("one tree\n")
    for slave in cluster.slaves:
        assert (slave.template / "etc" / "shared-check").read_text() == "one tree\n"
        # The slave's mounted jails come from that tree.
        login = slave.users[0].login
        assert (slave.jail(login) / "etc" / "shared-check").exists()


def test_slave_stays_down_while_the_master_fails_at_the_jail_rebuild(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=IMPATIENT)
    master = cluster.master
    for slave in cluster.slaves:  # down, new code unpacked, waiting for the master
        assert preinst(slave).returncode == 0
        unpack(slave)
    master.set_fakes("ivle-buildjail", fail=True)
    assert preinst(master).returncode == 0
    unpack(master)
    failed = postinst(master)
    assert failed.returncode == 1 and "rebuild the jail failed" in failed.stderr
    assert node_rows(master)["master"]["phase"] == "failed"

    for slave in cluster.slaves:  # the migrations are in, but not the jail tree
        waited = postinst(slave)
        assert waited.returncode == 1, waited.stderr
        # The master failed: no wait for master_timeout.
        assert "the master failed its upgrade to 1.1, web server left down: master (master, " \
            "serves 1.0, failed at rebuild-jail" in waited.stderr
        assert RESUME_LINE in waited.stderr
        assert not slave.service_running("apache2")
        assert "start-web" not in {k for k, v in journal_steps(slave).items()
                                   if v["status"] == "done"}

    master.set_fakes("ivle-buildjail", fail=False)
    assert postinst(master).returncode == 0  # dpkg --configure -a on the master
    for slave in cluster.slaves:  # ... then on each slave
        done = postinst(slave)
        assert done.returncode == 0, done.stderr
    assert_upgraded(cluster)


# The master failing at each step a slave waits for that a stand-in can fail:
# (program, what fails it, what heals it).
FAILURES = [("ivle-buildjail", True, False), ("ivle-usrmgt-server", ["start"], [])]


@pytest.mark.parametrize(("program", "fail", "heal"), FAILURES)
def test_a_slaves_wait_ends_as_soon_as_the_master_fails_at_a_step_it_waits_for(
        node_factory, program, fail, heal):
    """A failed master is not coming back without a person: the slave's wait,
    already under way, ends at the master's failed row (not at master_timeout),
    its web server down, naming the failure and the resume command."""
    cluster = build_cluster(node_factory, slaves=1,
                            cluster={"master_timeout": 300, "slaves_timeout": 60})
    master, slave = cluster.master, cluster.slaves[0]
    assert preinst(slave).returncode == 0
    unpack(slave)
    waiting = start_cli(slave, "hook", "--package-version", "1.1", "postinst", "configure",
                        "1.0")
    try:
        wait_rows(master, ["slave1"], "waiting")
        master.set_fakes(program, fail=fail)
        assert preinst(master).returncode == 0
        unpack(master)
        assert postinst(master).returncode == 1
        failed_at = time.monotonic()
        _out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert time.monotonic() - failed_at < 30, "the slave waited on after the master failed"
    assert waiting.returncode == 1, err
    assert "the master failed its upgrade to 1.1" in err and "web server left down" in err
    assert RESUME_LINE in err
    assert not slave.service_running("apache2")

    master.set_fakes(program, fail=heal)
    assert postinst(master).returncode == 0  # dpkg --configure -a on the master
    done = postinst(slave)  # ... then on the slave
    assert done.returncode == 0, done.stderr
    assert_upgraded(cluster)


def test_slave_waits_through_the_masters_steps_and_starts_after_them(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=PATIENT)
    master, slave = cluster.master, cluster.slaves[0]
    master.set_fakes("ivle-buildjail", delay=2)
    master.set_fakes("ivle-remakeuser", delay=1)
    assert preinst(slave).returncode == 0
    unpack(slave)
    waiting = subprocess.Popen(
        [*_hook_argv(), "postinst", "configure", "1.0"], env=_env(slave),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_rows(master, ["slave1"], "waiting")
    assert preinst(master).returncode == 0
    unpack(master)
    assert postinst(master).returncode == 0
    _out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    # Progress named the master's steps as it went through them.
    assert "master (master, serves 1.0, after at rebuild-jail" in err
    assert "master (master, serves 1.0, after at remake-users" in err
    assert "and finished its steps (jails, user jails, usrmgt: as the release needs)" in err
    assert_slaves_after_master(cluster)


def test_master_rebuilds_only_once_every_slave_released_its_jails(node_factory):
    cluster = build_cluster(node_factory, slaves=2, cluster=IMPATIENT)
    master, (slow, quick) = cluster.master, cluster.slaves
    assert cli(quick, "cluster", "prepare", "--to", "1.1").returncode == 0
    assert node_rows(master)["slave2"]["mounts"] == 0
    assert node_rows(master)["slave2"]["consoles"] == 0
    # slow's console ignores SIGTERM: its before-phase stays in stop-consoles
    # for term_timeout seconds, its web server already down.
    configure(slow, "slave1", {})
    set_setting(slow, "consoles", "term_timeout", "8")
    login = slow.users[1].login
    stubborn = subprocess.Popen(
        ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"],
        cwd=slow.jail(login) / "home" / login, user=int(slow.users[1].unixid))
    preparing = subprocess.Popen(
        [*_cli_argv(), "cluster", "prepare", "--to", "1.1"], env=_env(slow),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_step(master, "slave1", "stop-consoles")
        assert preinst(master).returncode == 0
        unpack(master)
        failed = postinst(master)  # migrates (slave1 is down), then must not rebuild
        assert failed.returncode == 1, failed.stderr
        assert "slaves still hold jails of the shared tree after 1.5s ([cluster] " \
            "slaves_timeout), jail tree left as it was: slave1 (jails not counted: not yet " \
            "unmounted; slave1 (slave, down, before at stop-consoles" in failed.stderr
        assert "slave2" not in failed.stderr.split("jail tree left as it was")[1]
        assert RESUME_LINE in failed.stderr
        assert master.template_version() == "1.0"  # nothing rewritten
        assert "rebuild-jail" in journal_steps(master)  # failed there, before the tool ran
        assert journal_steps(master)["rebuild-jail"]["status"] == "failed"
        _out, err = preparing.communicate(timeout=60)
        assert preparing.returncode == 0, err
    finally:
        stubborn.kill()
        stubborn.wait()
    rows = node_rows(master)
    assert rows["slave1"]["mounts"] == 0 and rows["slave1"]["consoles"] == 0
    done = postinst(master)  # resumed: no slave holds a jail now
    assert done.returncode == 0, done.stderr
    assert "no slave holds a jail of the shared tree" in done.stderr
    # ivle-buildjail rewrote the template's VERSION only after slow let go.
    rebuilt = (master.template / "usr" / "lib" / "ivle" / "VERSION").stat().st_ctime
    assert rebuilt > finished_at(slow, "unmount-jails").timestamp()
    for slave in cluster.slaves:
        unpack(slave)
        assert postinst(slave).returncode == 0
    assert_upgraded(cluster)


def test_slave_refuses_to_serve_on_a_newer_masters_schema(node_factory):
    cluster = build_cluster(node_factory, slaves=1, cluster=IMPATIENT)
    master, slave = cluster.master, cluster.slaves[0]
    assert preinst(slave).returncode == 0
    newer = {**RELEASES["1.1"], "20110101-01.sql": "ALTER TABLE login ADD COLUMN shoe text;\n"}
    assert preinst(master, new="1.2").returncode == 0
    unpack(master, "1.2", newer)
    assert postinst(master, new="1.2").returncode == 0
    unpack(slave)
    refused = postinst(slave)
    assert refused.returncode == 1
    assert "the master is ahead of this node: the database has 1 migration(s) IVLE 1.1 does " \
        "not ship (20110101-01); master is on or upgrading to IVLE 1.2" in refused.stderr
    assert "web server left down" in refused.stderr and RESUME_LINE in refused.stderr
    assert not slave.service_running("apache2")
    set_setting(slave, "cluster", "serve_on_newer_schema", "yes")
    done = postinst(slave)
    assert done.returncode == 0, done.stderr
    assert "serving IVLE 1.1 on a newer master, as told" in done.stderr
    assert slave.service_running("apache2")


# -- helpers --------------------------------------------------------------------------

def _env(node):
    from ivle_sandbox.cluster import env_of

    return env_of(node)


def _cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "ivle_maint"]


def _hook_argv() -> list[str]:
    return [*_cli_argv(), "hook", "--package-version", "1.1"]


def _wait_step(master, name: str, step: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node_rows(master).get(name, {}).get("step") == step:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never at {step}: {node_rows(master)}")

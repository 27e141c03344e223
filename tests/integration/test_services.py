"""Services: real init scripts (the sandbox's), real invoke-rc.d.

The init.d backend drives the sandbox node's own scripts.  The invoke-rc.d
tests bind-mount a policy-rc.d, an /etc/init.d and an /etc/rc2.d of their
own over the system's, in pytest's private mount namespace: the host (PID
1's namespace) keeps seeing its files, which each test checks.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ivle_maint import cli
from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.output import RecordingReporter
from ivle_maint.services import init_scripts
from ivle_maint.services.init_scripts import DONE, NOOP, RUNNING, SKIPPED, STOPPED, ServiceControl

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres, pytest.mark.once]

WEB, USRMGT = "apache2", "ivle-usrmgt-server"


def answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def daemon_pid(node: Any, name: str) -> int:
    return int((node.run_dir / f"{name}.pid").read_text())


def events(node: Any, name: str) -> list[str]:
    return [event for _, _, event in node.service_events(name)]


@pytest.fixture
def slave(node_factory: Any) -> Any:
    """A node with both services running and nothing mounted (fast)."""
    return node_factory(users=1, mount=False, role="both")


def settings_of(node: Any) -> Any:
    return load_settings(str(node.maint_conf))


# -- the init.d backend, on the sandbox's scripts ---------------------------


def test_stop_and_start_all_services_verified(slave: Any):
    rep = RecordingReporter()
    settings = settings_of(slave)
    stopped = init_scripts.run_action(settings, rep, "stop")
    assert [(r.service, r.outcome, r.state) for r in stopped] == [
        (WEB, DONE, STOPPED),
        (USRMGT, DONE, STOPPED),
    ]
    assert not slave.service_running(WEB) and not slave.service_running(USRMGT)
    assert not answers(slave.web_port)
    assert events(slave, WEB)[-1] == "stop" and events(slave, USRMGT)[-1] == "stop"
    assert f"{WEB}: stopped gracefully (in-flight requests done; init.d" in rep.lines[0]

    started = init_scripts.run_action(settings, rep, "start")
    # The user management server comes up before the web server needs it.
    assert [r.service for r in started] == [USRMGT, WEB]
    assert all(r.outcome == DONE and r.state == RUNNING for r in started)
    assert answers(slave.web_port) and answers(slave.usrmgt_port)


def test_stop_of_a_stopped_and_start_of_a_started_service_are_no_ops(slave: Any):
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd)
    before = events(slave, WEB)
    result = control.start(WEB)
    assert (result.outcome, result.reason) == (NOOP, "already running")
    assert events(slave, WEB) == before  # the script's start was never called
    assert control.stop(WEB).outcome == DONE
    after_stop = events(slave, WEB)
    again = control.stop(WEB)
    assert (again.outcome, again.reason) == (NOOP, "already stopped")
    assert not again.changed
    assert events(slave, WEB) == after_stop


def test_restart_gives_a_new_daemon(slave: Any):
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd)
    old = daemon_pid(slave, USRMGT)
    result = control.restart(USRMGT)
    assert result.outcome == DONE and result.state == RUNNING
    assert daemon_pid(slave, USRMGT) != old
    assert events(slave, USRMGT)[-2:] == ["stop", "start"]


def test_restart_of_a_stopped_service_starts_it(slave: Any):
    slave.service(USRMGT, "stop")
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd)
    assert control.restart(USRMGT).state == RUNNING
    assert slave.service_running(USRMGT)


def test_only_the_chosen_service_is_touched(slave: Any):
    results = init_scripts.run_action(settings_of(slave), RecordingReporter(), "stop", "web")
    assert [r.service for r in results] == [WEB]
    assert not slave.service_running(WEB)
    assert slave.service_running(USRMGT)


def test_the_role_decides_what_all_means(node_factory: Any):
    master = node_factory(users=1, mount=False, role="master")
    settings = settings_of(master)
    assert init_scripts.service_names(settings, "all") == [USRMGT]
    assert init_scripts.service_names(settings, "web") == [WEB]
    with pytest.raises(MaintError, match="unknown service 'db'"):
        init_scripts.service_names(settings, "db")


def test_script_that_exits_0_but_does_not_stop_is_a_clear_error(slave: Any):
    # The stand-in's injected failure with exit code 0: it lies.
    slave.set_fakes(WEB, fail="stop", exit_code=0)
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd,
                             timeout=1)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(MaintError) as caught:
        control.stop(WEB)
    message = str(caught.value)
    assert "apache2 is still running 1s after" in message and "exited 0" in message
    assert "\n" not in message
    assert time.monotonic() - started >= 1  # it waited for the status
    assert slave.service_running(WEB)


def test_failing_script_reports_status_and_last_line(slave: Any):
    slave.set_fakes(USRMGT, fail="start", exit_code=7)
    slave.service(USRMGT, "stop")
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd,
                             timeout=1)  # fmt: skip
    with pytest.raises(MaintError, match=r"failed with status 7: .*start failed.*is stopped"):
        control.start(USRMGT)


def test_missing_init_script_is_named(slave: Any):
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd)
    with pytest.raises(MaintError, match=r"no init script .*/etc/init.d/nginx"):
        control.stop("nginx")


def test_cli_status_and_stop(slave: Any, capsys: pytest.CaptureFixture[str]):
    conf = ["--config", str(slave.maint_conf)]
    assert cli.main([*conf, "services", "status"]) == 0
    assert capsys.readouterr().out == f"{WEB}: running\n{USRMGT}: running\n"
    assert cli.main([*conf, "services", "stop", "usrmgt"]) == 0
    assert f"ivle-maint: {USRMGT}: stopped" in capsys.readouterr().err
    assert cli.main([*conf, "services", "status"]) == 3
    assert capsys.readouterr().out == f"{WEB}: running\n{USRMGT}: stopped\n"
    # (A failing stop script of the web server is not reached: its graceful
    # stop has ended it; the failure is the start's here.)
    slave.set_fakes(USRMGT, fail="start", exit_code=1)
    assert cli.main([*conf, "services", "start", "usrmgt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ivle-maint: error: ") and err.count("\n") == 1


def test_auto_falls_back_to_systemctl_then_the_init_script(monkeypatch: pytest.MonkeyPatch):
    # A source install without init-system-helpers.
    present = {"systemctl"}
    monkeypatch.setattr(
        init_scripts, "_find", lambda cmd: f"/usr/bin/{cmd}" if cmd in present else None
    )
    monkeypatch.setattr(init_scripts, "systemd_running", lambda: True)
    assert init_scripts.resolve_backend("auto") == "systemctl"
    monkeypatch.setattr(init_scripts, "systemd_running", lambda: False)
    assert init_scripts.resolve_backend("auto") == "init.d"  # systemctl without systemd
    present.add("invoke-rc.d")
    assert init_scripts.resolve_backend("auto") == "invoke-rc.d"
    assert init_scripts.resolve_backend("init.d") == "init.d"


# -- the systemctl backend, through a shim (no systemd runs here) -----------

SYSTEMCTL_SHIM = """\
#!/bin/sh
# systemctl as far as ivle-maint uses it, over the sandbox's init scripts.
# With {late} present, 'stop' returns at once and the unit stays
# "deactivating" for a second (a job systemd has not finished).
echo "$*" >> {log}
case "$1" in
  is-active) if [ -e {late}.pending ]; then echo deactivating; exit 3; fi
             if {initd}/"$2" status >/dev/null; then echo active; exit 0; fi
             echo inactive; exit 3;;
  show) cat {initd}/../../run/"$5".pid;;
  stop) if [ -e {late} ]; then touch {late}.pending
          (sleep 1; {initd}/"$2" stop; rm {late}.pending) >/dev/null 2>&1 & exit 0; fi
        exec {initd}/"$2" stop;;
  *) exec {initd}/"$2" "$1";;
esac
"""


def systemctl_shim(slave: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shim first on PATH; returns its log of calls."""
    shim = tmp_path / "bin" / "systemctl"
    shim.parent.mkdir()
    log = tmp_path / "systemctl.log"
    shim.write_text(SYSTEMCTL_SHIM.format(log=log, initd=slave.initd, late=tmp_path / "late"))
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    return log


def test_systemctl_backend_waits_for_a_unit_on_its_way(
    slave: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    log = systemctl_shim(slave, tmp_path, monkeypatch)
    (tmp_path / "late").touch()
    control = ServiceControl(RecordingReporter(), backend="systemctl", timeout=10)
    assert control.status(WEB) == RUNNING
    result = control.stop(WEB)
    assert (result.outcome, result.state) == (DONE, STOPPED)
    assert not slave.service_running(WEB)
    calls = log.read_text().splitlines()
    assert f"stop {WEB}" in calls
    assert calls.count(f"is-active {WEB}") >= 4  # asked again while deactivating


def test_systemctl_backend_checks_once_when_the_job_is_done(
    slave: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """systemctl returns with its job done: one status check proves the state
    (the old code asked again and again only when it was not yet so; this
    counts that nothing is asked beyond the check before and the one after)."""
    log = systemctl_shim(slave, tmp_path, monkeypatch)
    control = ServiceControl(RecordingReporter(), backend="systemctl", timeout=10)
    assert control.stop(USRMGT).state == STOPPED
    assert control.start(USRMGT).state == RUNNING
    assert log.read_text().splitlines() == [
        f"is-active {USRMGT}", f"stop {USRMGT}", f"is-active {USRMGT}",
        f"is-active {USRMGT}", f"start {USRMGT}", f"is-active {USRMGT}"]


def test_systemctl_job_done_in_the_wrong_state_fails_at_once(
    slave: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    systemctl_shim(slave, tmp_path, monkeypatch)
    (slave.root / "etc" / "ivle" / "fakes.conf").write_text(
        f"[{USRMGT}]\nfail = stop\nexit_code = 0\n")
    control = ServiceControl(RecordingReporter(), backend="systemctl", timeout=30)
    with pytest.raises(MaintError, match=f"{USRMGT} is running after 'systemctl stop"):
        control.stop(USRMGT)


# -- the web server's graceful stop: a request in flight completes ---------


def slow_request(port: int, seconds: float) -> tuple[threading.Thread, list[object]]:
    """GET /slow?SECONDS in a thread; its answer (status or exception) lands in the list."""
    got: list[object] = []

    def ask() -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", f"/slow?{seconds}")
            got.append(conn.getresponse().status)
        except (OSError, http.client.HTTPException) as exc:
            got.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=ask)
    thread.start()
    return thread, got


def in_flight(slave: Any, thread: threading.Thread) -> None:
    """Until the fake's worker has begun the slow request."""
    while "slow" not in events(slave, WEB):
        assert thread.is_alive()
        time.sleep(0.01)


def graceful_stop(slave: Any, control: ServiceControl) -> tuple[Any, list[object]]:
    thread, got = slow_request(slave.web_port, 1.5)
    in_flight(slave, thread)
    result = control.graceful_stop(WEB)
    thread.join()
    return result, got


def test_graceful_stop_lets_the_request_in_flight_complete(slave: Any):
    # The main process looks only every 60 s, as Apache's looks every second:
    # the stop must follow the worker's exit, not wait for the main process's.
    (slave.root / "etc" / "ivle" / "fakes.conf").write_text(f"[{WEB}]\ndrain_poll = 60\n")
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd,
                             timeout=30)
    result, got = graceful_stop(slave, control)
    assert got == [200]
    assert (result.outcome, result.state) == (DONE, STOPPED)
    assert "stopped gracefully (in-flight requests done; init.d" in result.message
    assert not slave.service_running(WEB) and not answers(slave.web_port)
    assert events(slave, WEB)[-2:] == ["slow", "stop"]  # the verified stop ended it


def test_plain_stop_cuts_the_request_in_flight(slave: Any):
    """What the graceful stop is for (and what the old stop-web did)."""
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd)
    thread, got = slow_request(slave.web_port, 1.5)
    in_flight(slave, thread)
    assert control.stop(WEB).state == STOPPED
    thread.join()
    assert got != [200]


def test_stop_web_is_graceful(slave: Any):
    settings = settings_of(slave)
    thread, got = slow_request(slave.web_port, 1.5)
    in_flight(slave, thread)
    (result,) = init_scripts.run_action(settings, RecordingReporter(), "stop", "web")
    thread.join()
    assert got == [200] and result.state == STOPPED and result.graceful


def test_graceful_stop_bounded_by_the_timeout(slave: Any):
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd,
                             timeout=0.5)
    thread, got = slow_request(slave.web_port, 30)
    in_flight(slave, thread)
    result = control.graceful_stop(WEB)
    thread.join()
    assert got != [200] and result.state == STOPPED
    assert "requests still in flight after 0.5s were cut" in result.message
    assert control.reporter.lines == [  # type: ignore[attr-defined]
        f"warning: {WEB}: requests still in flight after 0.5s were cut ([services] timeout)"]


def test_graceful_stop_through_systemctl(
    slave: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    log = systemctl_shim(slave, tmp_path, monkeypatch)
    control = ServiceControl(RecordingReporter(), backend="systemctl", timeout=30)
    result, got = graceful_stop(slave, control)
    assert got == [200] and result.state == STOPPED
    assert f"show -p MainPID --value {WEB}" in log.read_text().splitlines()


def test_graceful_stop_of_a_stopped_server_is_a_no_op(slave: Any):
    slave.service(WEB, "stop")
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd)
    assert control.graceful_stop(WEB).outcome == NOOP


# -- invoke-rc.d, with our own policy-rc.d, init.d and rc2.d ---------------

POLICY = Path("/usr/sbin/policy-rc.d")


def host_view(path: Path) -> Path:
    """path as the host sees it: through the root of our nearest ancestor in
    another mount namespace (pytest's caller; /proc/1 may be off limits)."""
    import psutil

    ours = os.stat("/proc/self/ns/mnt").st_ino
    for parent in psutil.Process().parents():
        try:
            if os.stat(f"/proc/{parent.pid}/ns/mnt").st_ino != ours:
                return Path(f"/proc/{parent.pid}/root") / path.relative_to("/")
        except OSError:
            continue
    pytest.fail("no ancestor outside pytest's mount namespace: is it private at all?")


ALLOW = "exit 0"
DENY = "exit 101"
# A careful policy: allows what is asked, but not the "(start)" invoke-rc.d
# asks about when the runlevel says the service should not run.
PLAIN_ONLY = 'case "$2" in "("*) exit 101;; esac; exit 0'


def _digest(path: Path) -> str | None:
    """The file's sha256; None when it does not exist (a host without one)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


class InvokeRcD:
    """Namespace-local replacements of the files invoke-rc.d consults."""

    def __init__(self, node: Any, tmp: Path) -> None:
        from ivle_sandbox import mountns

        self.mountns = mountns
        self.log = tmp / "policy.log"
        self.policy = tmp / "policy-rc.d"
        self.write_policy(ALLOW)
        initd, rc2 = tmp / "init.d", tmp / "rc2.d"
        initd.mkdir()
        rc2.mkdir()
        for name in node.services:
            (initd / name).write_bytes((node.initd / name).read_bytes())
            (initd / name).chmod(0o755)
            (rc2 / f"S01{name}").symlink_to(f"../init.d/{name}")
        self.targets = [(self.policy, POLICY), (initd, Path("/etc/init.d")),
                        (rc2, Path("/etc/rc2.d"))]  # fmt: skip
        # A host with no policy-rc.d (a fresh machine) has nothing to bind
        # over: an overlay of /usr/sbin, in our namespace only, gives one.
        self.overlay = None if POLICY.exists() else tmp / "sbin-overlay"
        self.host_policy = _digest(POLICY)
        self.host_initd = sorted(os.listdir("/etc/init.d"))

    def write_policy(self, body: str, *, executable: bool = True) -> None:
        self.policy.write_text(f'#!/bin/sh\necho "$*" >> {self.log}\n{body}\n')
        self.policy.chmod(0o755 if executable else 0o644)

    def asked(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def __enter__(self) -> InvokeRcD:
        if self.overlay is not None:
            upper, work = self.overlay / "upper", self.overlay / "work"
            upper.mkdir(parents=True)
            work.mkdir()
            (upper / POLICY.name).write_text("")
            self.mountns.require_private(POLICY.parent)
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={POLICY.parent},upperdir={upper},workdir={work}", str(POLICY.parent)],
                check=True,
            )  # fmt: skip
        for source, target in self.targets:
            self.mountns.require_private(target)
            self.mountns.bind(source, target)
        return self

    def __exit__(self, *exc: object) -> None:
        for _, target in reversed(self.targets):
            self.mountns.umount(target)
        if self.overlay is not None:
            self.mountns.umount(POLICY.parent)
        assert _digest(POLICY) == self.host_policy
        assert sorted(os.listdir("/etc/init.d")) == self.host_initd


@pytest.fixture
def invoke_rc_d(slave: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # systemd's runlevel (what /sbin/runlevel is here) answers from these.
    monkeypatch.setenv("RUNLEVEL", "2")
    monkeypatch.setenv("PREVLEVEL", "N")
    host_policy = host_view(POLICY)
    host_before = _digest(host_policy)
    with InvokeRcD(slave, tmp_path) as fake:
        # The host still sees its own policy-rc.d while we see ours.
        assert _digest(host_policy) == host_before != _digest(POLICY)
        yield fake
    assert _digest(host_policy) == host_before == _digest(POLICY)


needs_invoke_rc_d = pytest.mark.skipif(
    not init_scripts._find("invoke-rc.d"), reason="needs invoke-rc.d (init-system-helpers)"
)


def control(node: Any = None) -> ServiceControl:
    """invoke-rc.d; NODE's scripts' tree (its run/) where the pidfiles are."""
    where = {"initd_dir": node.initd} if node is not None else {}
    return ServiceControl(RecordingReporter(), backend="invoke-rc.d", timeout=10, **where)


@needs_invoke_rc_d
def test_auto_picks_invoke_rc_d_on_debian():
    assert init_scripts.resolve_backend("auto") == "invoke-rc.d"
    with pytest.raises(MaintError, match="unknown service backend"):
        init_scripts.resolve_backend("upstart")


@needs_invoke_rc_d
def test_invoke_rc_d_allowed_stop_and_start(slave: Any, invoke_rc_d: Any):
    stopped = control().stop(WEB)
    assert (stopped.outcome, stopped.backend, stopped.state) == (DONE, "invoke-rc.d", STOPPED)
    assert not slave.service_running(WEB)
    started = control().start(WEB)
    assert (started.outcome, started.state) == (DONE, RUNNING)
    assert answers(slave.web_port)
    assert invoke_rc_d.asked() == [f"{WEB} stop 2", f"{WEB} start 2"]


@needs_invoke_rc_d
def test_invoke_rc_d_denied_is_skipped_not_failed(slave: Any, invoke_rc_d: Any):
    invoke_rc_d.write_policy(DENY)
    before = daemon_pid(slave, WEB)
    result = control().stop(WEB)
    assert result.outcome == SKIPPED
    assert result.reason == "policy-rc.d forbids stop"
    assert result.message == f"{WEB}: stop skipped: policy-rc.d forbids stop"
    assert daemon_pid(slave, WEB) == before and slave.service_running(WEB)
    assert invoke_rc_d.asked() == [f"{WEB} stop 2"]


@needs_invoke_rc_d
def test_denied_start_is_reported_as_a_warning(slave: Any, invoke_rc_d: Any):
    slave.service(WEB, "stop")
    invoke_rc_d.write_policy(DENY)
    rep = RecordingReporter()
    settings = settings_of(slave)
    settings["services"]["backend"] = "invoke-rc.d"
    (result,) = init_scripts.run_action(settings, rep, "start", "web")
    assert result.outcome == SKIPPED and not slave.service_running(WEB)
    assert rep.lines == [f"warning: {WEB}: start skipped: policy-rc.d forbids start"]


@needs_invoke_rc_d
def test_no_runlevel_start_is_a_clear_error(
    slave: Any, invoke_rc_d: Any, monkeypatch: pytest.MonkeyPatch
):
    slave.service(WEB, "stop")
    monkeypatch.delenv("RUNLEVEL")
    invoke_rc_d.write_policy(PLAIN_ONLY)
    with pytest.raises(MaintError, match="could not determine the current runlevel"):
        control().start(WEB)
    assert not slave.service_running(WEB)
    # No policy-rc.d at all (not executable): the same, and said the same way.
    invoke_rc_d.write_policy(ALLOW, executable=False)
    with pytest.raises(MaintError, match=r"did not start apache2: .*runlevel"):
        control().start(WEB)
    # Stopping does not need a runlevel.
    slave.service(WEB, "start")
    invoke_rc_d.write_policy(PLAIN_ONLY)
    assert control().stop(WEB).outcome == DONE


@needs_invoke_rc_d
def test_no_runlevel_in_a_chroot_that_forbids_everything_is_skipped(
    slave: Any, invoke_rc_d: Any, monkeypatch: pytest.MonkeyPatch
):
    # piuparts and image builders: no init system and a denying policy.
    slave.service(WEB, "stop")
    monkeypatch.delenv("RUNLEVEL")
    invoke_rc_d.write_policy(DENY)
    result = control().start(WEB)
    assert (result.outcome, result.reason) == (SKIPPED, "policy-rc.d forbids start")


@needs_invoke_rc_d
def test_invoke_rc_d_start_of_a_disabled_service_is_skipped(slave: Any, invoke_rc_d: Any):
    slave.service(WEB, "stop")
    invoke_rc_d.write_policy(PLAIN_ONLY)
    (Path("/etc/rc2.d") / f"S01{WEB}").unlink()  # update-rc.d apache2 disable, sort of
    result = control().start(WEB)
    assert result.outcome == SKIPPED
    assert result.reason == f"{WEB} is not enabled in the current runlevel (see update-rc.d)"
    assert not slave.service_running(WEB)
    assert f"{WEB} (start) 2" in invoke_rc_d.asked()


@needs_invoke_rc_d
def test_graceful_stop_obeys_policy_rc_d(slave: Any, invoke_rc_d: Any):
    invoke_rc_d.write_policy(DENY)
    before = daemon_pid(slave, WEB)
    result = control().graceful_stop(WEB)
    assert (result.outcome, result.reason) == (SKIPPED, "policy-rc.d forbids stop")
    assert daemon_pid(slave, WEB) == before and answers(slave.web_port)
    invoke_rc_d.write_policy(ALLOW)
    result, got = graceful_stop(slave, control(slave))
    assert got == [200] and (result.outcome, result.backend) == (DONE, "invoke-rc.d")


LAZY = """\
#!/bin/sh
# Its stop returns at once; the daemon takes half a second to exit.
PIDFILE={run}/lazyd.pid
case "$1" in
  start) /usr/bin/python3 -c 'import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))
while True: time.sleep(1)' </dev/null >/dev/null 2>&1 &
         echo $! > $PIDFILE;;
  stop) kill -TERM "$(cat $PIDFILE)";;
  status) echo status >> {run}/lazyd.asked
          pid=$(cat $PIDFILE 2>/dev/null) && [ -d /proc/$pid ] &&
            ! grep -q '^State:.*Z' /proc/$pid/status;;
esac
"""


def test_init_script_stop_waits_for_the_daemons_exit_not_a_poll(slave: Any):
    """The stop returned before its daemon exited: the daemon's pidfd says when
    (the old code asked the status again and again meanwhile)."""
    script = slave.initd / "lazyd"
    script.write_text(LAZY.format(run=slave.run_dir))
    script.chmod(0o755)
    control = ServiceControl(RecordingReporter(), backend="init.d", initd_dir=slave.initd,
                             timeout=30)
    assert control.start("lazyd").state == RUNNING
    asked = slave.run_dir / "lazyd.asked"
    asked.unlink()
    result = control.stop("lazyd")
    assert (result.outcome, result.state) == (DONE, STOPPED)
    assert asked.read_text().split() == ["status", "status", "status"]  # before, after, final


# A policy that lets the maintenance page's graceful reload run, but no restart.
NO_RESTART = 'case "$2" in restart) exit 101;; esac; exit 0'


@needs_invoke_rc_d
@pytest.mark.parametrize(("policy", "how"), [(DENY, "full"), (NO_RESTART, "full"),
                                             (DENY, "graceful")])
def test_a_maintenance_restart_policy_rc_d_forbids_is_never_taken_for_done(
        slave: Any, invoke_rc_d: Any, policy: str, how: str):
    """The maintenance page's change of Apache ([web] restart = full, or the
    restart that ends a reload's stragglers) forbidden by policy-rc.d while
    Apache runs: the running server keeps what it served (IVLE's old code,
    or the page at start-web), so the change is refused in one line, never
    reported done.  Before: the skipped restart was returned as the step's
    summary; stop-web went on to the migrations with IVLE's code serving."""
    from ivle_maint.services import maintenance_page

    invoke_rc_d.write_policy(policy)
    before = daemon_pid(slave, WEB)
    with pytest.raises(MaintError) as refused:
        maintenance_page._graceful(control(slave), WEB, how)
    assert "policy-rc.d forbids" in str(refused.value) and "still serves" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert daemon_pid(slave, WEB) == before and slave.service_running(WEB)

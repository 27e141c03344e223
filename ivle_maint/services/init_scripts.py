"""Stopping, starting and restarting IVLE's services, and proving it.

Actions go through invoke-rc.d when it exists, as Debian maintainer
scripts must, so a policy-rc.d that forbids the action (chroots, image
builders, piuparts) is obeyed and reported as "skipped".  Source installs
without it use systemctl or the init script ([services] backend).

Every start or restart (and the reload of a graceful restart) asks
may_start() first, which asks the schema hold (gates/schema_hold.py) for
the web server: no IVLE web code runs while an upgrade is unfinished.

An exit status proves nothing: every action is followed by a status
check.  systemctl (and invoke-rc.d, which hands over to it) returns once
systemd's job is done, so one check says it, unless the unit is still on
its way (activating, deactivating); after an init script's stop the
daemon's exit is awaited through a pidfd (drain.py); otherwise the status
is asked again until it is the asked state or [services] timeout runs out.

The web server's stop is graceful (graceful_stop): ivle-maint holds its
listening sockets, taking no new connection, until the connections queued
in them are accepted (listeners.py); then Apache closes its listening
sockets and every request in flight completes before the stop that
ivle-maint verifies.  No client that got a connection is reset.  A start
that finds a service running takes off the filter a graceful stop killed
before its end (SIGKILL) left on its listening sockets.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import quickrun, system
from ..config import Settings
from ..errors import MaintError
from ..gates import pidfiles, schema_hold, trusted
from ..output import Reporter
from ..safepaths import check_dir
from . import listeners
from .drain import open_pidfd, signal_and_drain, wait_fd

log = logging.getLogger(__name__)

RUNNING, STOPPED, UNKNOWN = "running", "stopped", "unknown"
DONE, NOOP, SKIPPED = "done", "no-op", "skipped"
ACTIONS = ("stop", "start", "restart", "reload")  # reload: a graceful restart
BACKENDS = ("invoke-rc.d", "systemctl", "init.d")

# invoke-rc.d's "forbidden" status (with --disclose-deny) and its messages.
POLICY_DENY = 101
NO_RUNLEVEL_TEXT = "could not determine current runlevel"
POLICY_DENIED_TEXT = "policy-rc.d denied execution"
# Seconds to re-check the status after an action exited nonzero.
FAILED_GRACE = 2.0
# Where invoke-rc.d looks, whatever [services] initd_dir says.
SYSTEM_INITD = Path("/etc/init.d")
# Apache's graceful-stop (what `apachectl graceful-stop` sends to the parent).
GRACEFUL_STOP = signal.SIGWINCH


@dataclass(frozen=True)
class ServiceResult:
    """What one action on one service did."""

    service: str
    action: str  # stop, start, restart, reload
    outcome: str  # DONE, NOOP (already so) or SKIPPED (forbidden)
    state: str  # RUNNING, STOPPED or UNKNOWN afterwards
    backend: str
    reason: str = ""  # why it was a no-op or skipped
    seconds: float = 0.0
    output: tuple[str, ...] = field(default=(), repr=False)
    graceful: str = ""  # a graceful stop: how the requests in flight ended

    @property
    def changed(self) -> bool:
        return self.outcome == DONE

    @property
    def message(self) -> str:
        if self.outcome == DONE:
            past = {"stop": "stopped", "start": "started", "restart": "restarted",
                    "reload": "reloaded"}[self.action]
            how = (" gracefully", f"{self.graceful}; ") if self.graceful else ("", "")
            return f"{self.service}: {past}{how[0]} ({how[1]}{self.backend}, {self.seconds:.1f}s)"
        if self.outcome == NOOP:
            return f"{self.service}: {self.reason}"
        return f"{self.service}: {self.action} skipped: {self.reason}"


def _find(command: str) -> str | None:
    return system.which(command) or system.which(command, path=system.SBIN_PATH)


def systemd_running() -> bool:
    """True when systemd is PID 1 (the test systemd itself uses)."""
    return os.path.isdir("/run/systemd/system")


def resolve_backend(choice: str) -> str:
    """'auto' becomes invoke-rc.d, else systemctl (if systemd runs), else init.d."""
    if choice not in ("auto", *BACKENDS):
        raise MaintError(f"unknown service backend {choice!r}; use auto or one of {BACKENDS}")
    if choice != "auto":
        return choice
    if _find("invoke-rc.d"):
        return "invoke-rc.d"
    if systemd_running() and _find("systemctl"):
        return "systemctl"
    return "init.d"


def _lsb_state(exit_code: int) -> str:
    # LSB: 0 running; 1 dead with pid file, 2 dead with lock file, 3 not running.
    if exit_code == 0:
        return RUNNING
    return STOPPED if exit_code in (1, 2, 3) else UNKNOWN


def _systemd_state(word: str) -> str:
    if word in ("active", "reloading"):
        return RUNNING
    if word in ("inactive", "failed", "dead"):
        return STOPPED
    return UNKNOWN  # activating, deactivating: still on its way


class ServiceControl:
    """Drives services through one backend and verifies every action."""

    def __init__(
        self,
        reporter: Reporter,
        *,
        backend: str = "auto",
        initd_dir: Path = SYSTEM_INITD,
        timeout: float = 60.0,
        gate: Callable[[str], None] | None = None,
    ) -> None:
        self.reporter = reporter
        self.backend = resolve_backend(backend)
        self.initd_dir = Path(initd_dir)
        self.timeout = timeout
        self.gate = gate

    def may_start(self, name: str) -> None:
        """Every start, restart or reload asks here first (the schema hold)."""
        if self.gate is not None:
            self.gate(name)

    # -- status ----------------------------------------------------------

    def _init_script(self, name: str) -> Path:
        # invoke-rc.d only ever runs /etc/init.d/NAME.
        base = SYSTEM_INITD if self.backend == "invoke-rc.d" else self.initd_dir
        script = base / name
        if not os.access(script, os.X_OK):
            raise MaintError(f"no init script {script} for service {name}")
        return script

    def _uses_systemctl(self) -> bool:
        return self.backend == "systemctl" or (self.backend == "invoke-rc.d" and systemd_running())

    def status(self, name: str) -> str:
        """RUNNING, STOPPED or UNKNOWN, asked of systemd or the init script.

        Never through invoke-rc.d: a denying policy-rc.d would answer
        "unknown" for every service, and asking changes nothing anyway.
        """
        if self._uses_systemctl():
            done = quickrun.run(["systemctl", "is-active", name], keep_stdout=True, timeout=30)
            word = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
            return _systemd_state(word)
        done = quickrun.run([str(self._init_script(name)), "status"], timeout=30)
        return _lsb_state(done.exit_code)

    def wait_for(self, name: str, wanted: str, deadline: float) -> str:
        """Poll the status until it is wanted or the deadline passes; the last one."""
        delay = 0.05
        while True:
            state = self.status(name)
            if state == wanted or time.monotonic() >= deadline:
                return state
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 2, 0.5)

    def main_process(self, name: str) -> tuple[int, int] | None:
        """The service's main process, (pid, pidfd): systemd's MainPID, else
        its pidfile's (gates/pidfiles.py).  The caller closes the pidfd,
        through which alone it signals, holds or waits for that process."""
        if self._uses_systemctl():
            done = quickrun.run(["systemctl", "show", "-p", "MainPID", "--value", name],
                              keep_stdout=True, timeout=30)
            value = done.stdout.strip()
            pid = int(value) if value.isdigit() and int(value) > 0 else None
            pidfd = None if pid is None else open_pidfd(pid)
            return None if pid is None or pidfd is None else (pid, pidfd)
        for path in self._pidfiles(name):  # believed only for the daemon's process
            found = pidfiles.main_process(path)
            if found is not None:
                return found
        return None

    def _pidfiles(self, name: str) -> list[Path]:
        # The run directory beside the scripts' etc/: /run for /etc/init.d
        # (apache2's is /run/apache2/apache2.pid), a sandbox's own otherwise.
        runs = dict.fromkeys(d.parent.parent / "run" for d in (self.initd_dir, SYSTEM_INITD)
                             if self.backend == "invoke-rc.d" or d == self.initd_dir)
        return [path for run in runs for path in (run / name / f"{name}.pid",
                                                  run / f"{name}.pid")]

    def settle(self, name: str, wanted: str, deadline: float, pidfd: int | None = None) -> str:
        """The state after an action, waited for by the real event where known.

        systemctl returns when its job is done: a definite state is final.
        An init script's stop: the old daemon's exit (its PIDFD, opened
        before the stop: never a process that took its pid since)."""
        state = self.status(name)
        if state == wanted:
            return state
        if self._uses_systemctl() and state != UNKNOWN:
            return state
        if pidfd is not None and wanted == STOPPED:
            wait_fd(pidfd, deadline - time.monotonic())
        return self.wait_for(name, wanted, deadline)

    # -- actions ---------------------------------------------------------

    def _argv(self, name: str, action: str) -> list[str]:
        if self.backend == "invoke-rc.d":
            # --disclose-deny: a policy denial must be told apart from success.
            return ["invoke-rc.d", "--disclose-deny", name, action]
        if self.backend == "systemctl":
            return ["systemctl", action, name]
        return [str(self._init_script(name)), action]

    def _policy_forbids(self, name: str, action: str) -> bool:
        """Ask policy-rc.d itself, as invoke-rc.d does, about the plain action."""
        helper = Path(os.environ.get("DPKG_ROOT", "") + "/usr/sbin/policy-rc.d")
        if not os.access(helper, os.X_OK):
            return False
        return quickrun.run([str(helper), name, action], timeout=30).exit_code == POLICY_DENY

    def _denial(self, name: str, action: str, out: str) -> str:
        """Why invoke-rc.d refused (exit 101); raises when it is no policy's wish."""
        starts = action in ("start", "restart")
        # For a start the runlevel forbids, invoke-rc.d asks policy-rc.d about
        # "(start)" instead; a policy that denies that but allows a plain start
        # did not forbid the start itself.
        if POLICY_DENIED_TEXT in out and (not starts or self._policy_forbids(name, action)):
            return f"policy-rc.d forbids {action}"
        if starts and NO_RUNLEVEL_TEXT in out:
            # No init system (a container, a chroot without policy-rc.d):
            # invoke-rc.d never starts a SysV script here.
            raise MaintError(
                f"invoke-rc.d did not {action} {name}: it could not determine the current "
                f"runlevel (no init system running?); start it by hand or set "
                f"[services] backend = init.d"
            )
        if starts:
            return f"{name} is not enabled in the current runlevel (see update-rc.d)"
        return f"invoke-rc.d did not run it: {out.splitlines()[-1] if out else 'no output'}"

    def _run(self, name: str, action: str) -> system.Completed:
        return quickrun.run(
            self._argv(name, action),
            timeout=self.timeout,
            on_line=lambda text: log.info("%s %s: %s", name, action, text),
        )

    def act(self, name: str, action: str) -> ServiceResult:
        """stop, start or restart NAME; verified; no-op when already so."""
        if action not in ACTIONS:
            raise MaintError(f"unknown service action {action!r}; use one of {ACTIONS}")
        wanted = STOPPED if action == "stop" else RUNNING
        if action != "stop":
            self.may_start(name)
        before = self.status(name)
        if action not in ("restart", "reload") and before == wanted:
            reason = "already stopped" if wanted == STOPPED else "already running"
            if action == "start":
                self._clear_leftover_filter(name)
            return ServiceResult(name, action, NOOP, before, self.backend, reason)
        # An init script's stop: the daemon whose exit says it stopped.
        main = None if wanted == RUNNING or self._uses_systemctl() else self.main_process(name)
        try:
            started = time.monotonic()
            done = self._run(name, action)
            out = "\n".join(done.tail)
            if self.backend == "invoke-rc.d" and done.exit_code == POLICY_DENY:
                reason = self._denial(name, action, out)
                return ServiceResult(name, action, SKIPPED, before, self.backend, reason,
                                     output=done.tail)  # fmt: skip
            # A script that failed gets a short grace only: waiting the whole
            # timeout for a state it said it could not reach helps nobody.
            wait = self.timeout if done.ok else min(self.timeout, FAILED_GRACE)
            state = self.settle(name, wanted, started + wait, None if main is None else main[1])
        finally:
            if main is not None:
                os.close(main[1])
        seconds = time.monotonic() - started
        if state != wanted:
            raise MaintError(self._failure(name, action, done, state))
        if not done.ok:
            # The asked state was reached, so the failure was cosmetic.
            self.reporter.warn(f"{name}: {action} exited {done.exit_code} but {name} is {state}")
        return ServiceResult(name, action, DONE, state, self.backend, seconds=seconds,
                             output=done.tail)  # fmt: skip

    def _failure(self, name: str, action: str, done: system.Completed, state: str) -> str:
        last = done.tail[-1] if done.tail else "no output"
        argv = " ".join(done.argv)
        if not done.ok:
            return f"{argv} failed with status {done.exit_code}: {last}; {name} is {state}"
        if self._uses_systemctl() and state != UNKNOWN:
            # systemctl returned with its job done: no wait would change this.
            return f"{name} is {state} after '{argv}' exited 0"
        hint = ""
        if NO_RUNLEVEL_TEXT in "\n".join(done.tail):
            hint = " (invoke-rc.d could not determine the runlevel: no init system running?)"
        return (
            f"{name} is still {state} {self.timeout:g}s after '{argv}' "
            f"exited 0{hint}; see [services] timeout"
        )

    def stop(self, name: str) -> ServiceResult:
        return self.act(name, "stop")

    def graceful_stop(self, name: str) -> ServiceResult:
        """Stop the web server without cutting a request in flight, and
        without resetting a connection it had not yet accepted.

        First ivle-maint holds copies of the main process's listening
        sockets, filtered to take no new connection, until the connections
        queued in them are accepted (listeners.py; half of [services]
        timeout at most: the requests in flight keep the rest).  Then Apache's
        graceful-stop signal to its main process (through the same pidfd)
        closes the listening sockets and lets every child finish the request
        it serves; once they are gone (or the main process is, or [services]
        timeout passed) the ordinary verified stop ends what is left: under
        systemd a stop job, so its ExecStop and KillMode find nothing
        serving.  The copies are closed last.  A stop policy-rc.d forbids is
        not begun: act() reports it skipped, as it reports an already
        stopped server a no-op."""
        if self.status(name) != RUNNING or self._stop_forbidden(name):
            return self.act(name, "stop")
        main = self.main_process(name)
        if main is None:
            return self.act(name, "stop")
        pid, pidfd = main
        started = time.monotonic()
        deadline = started + self.timeout
        stopped = False
        held = listeners.hold(pidfd, pid)
        try:
            if held.why_not:  # the administrator's to know: clients may see resets
                self.reporter.warn(f"{name}: connections queued at its stop may be reset: "
                                   f"listening sockets not held ({held.why_not})")
            # Half the time at most: children busy with long requests take
            # nothing queued, and those requests must keep their share.
            elif not held.wait_empty((deadline - time.monotonic()) / 2):
                self.reporter.warn(f"{name}: connections still queued after "
                                   f"{self.timeout / 2:g}s (half [services] timeout) may be "
                                   f"reset")
            drained = signal_and_drain(pid, GRACEFUL_STOP, deadline - time.monotonic(), pidfd)
            result = self.act(name, "stop")
            stopped = result.state == STOPPED
        finally:
            held.close(detach=not stopped)
            os.close(pidfd)
        seconds = time.monotonic() - started
        how = "in-flight requests done" if drained else \
            f"requests still in flight after {self.timeout:g}s were cut"
        if not drained:
            self.reporter.warn(f"{name}: {how} ([services] timeout)")
        if result.outcome == NOOP:  # the main process exited by itself
            result = replace(result, outcome=DONE, reason="")
        return replace(result, seconds=seconds, graceful=how)

    def _clear_leftover_filter(self, name: str) -> None:
        """A running server asked to start (a recovery): a graceful stop
        killed between its filter and the stop (SIGKILL: no cleanup) left
        the server taking no new connection; take that filter off."""
        main = self.main_process(name)
        if main is None:
            return
        pid, pidfd = main
        try:
            if listeners.clear_leftover(pidfd, pid):
                self.reporter.warn(f"{name}: a graceful stop's filter was left on its listening "
                                   f"sockets (that stop killed?): taken off")
        finally:
            os.close(pidfd)

    def _stop_forbidden(self, name: str) -> bool:
        return self.backend == "invoke-rc.d" and self._policy_forbids(name, "stop")

    def start(self, name: str) -> ServiceResult:
        return self.act(name, "start")

    def restart(self, name: str) -> ServiceResult:
        return self.act(name, "restart")


def check_init_scripts(settings: Settings, backend: str | None = None) -> None:
    """Refuse init scripts, or their directory, that another user could
    change (ConfigError): ivle-maint runs them as root."""
    conf = settings["services"]
    backend = backend or resolve_backend(conf["backend"])
    if backend == "systemctl":
        return  # systemd runs the units, not ivle-maint
    directory = SYSTEM_INITD if backend == "invoke-rc.d" else Path(conf["initd_dir"])
    check_dir(directory, "[services] initd_dir" if backend == "init.d" else "init.d directory")
    for name in (conf["web"], conf["usrmgt"]):
        trusted.program(str(directory / name), purpose=trusted.INIT_SCRIPT)


def control_from_settings(settings: Settings, reporter: Reporter) -> ServiceControl:
    """A ServiceControl configured by [services] of ivle-maint's settings;
    its init scripts checked (check_init_scripts) before any runs."""
    conf = settings["services"]

    def gate(name: str) -> None:
        if name == conf["web"]:
            schema_hold.check(settings, name)

    control = ServiceControl(
        reporter,
        backend=conf["backend"],
        initd_dir=Path(conf["initd_dir"]),
        timeout=float(conf["timeout"]),
        gate=gate,
    )
    check_init_scripts(settings, control.backend)
    return control


def service_names(settings: Settings, which: str = "all") -> list[str]:
    """Init script names for 'web', 'usrmgt' or 'all' (the node role's)."""
    conf = settings["services"]
    if which in ("web", "usrmgt"):
        return [conf[which]]
    if which != "all":
        raise MaintError(f"unknown service {which!r}; use web, usrmgt or all")
    role = settings.role
    names = []
    if role.runs_web:
        names.append(conf["web"])
    if role.runs_database:
        names.append(conf["usrmgt"])
    return names


def run_action(
    settings: Settings, reporter: Reporter, action: str, which: str = "all"
) -> list[ServiceResult]:
    """ACTION on the chosen services, each reported in one line."""
    control = control_from_settings(settings, reporter)
    results = []
    # Stop the web server before the user management server; start in reverse.
    names = service_names(settings, which)
    if action == "start":
        names.reverse()
    for name in names:
        graceful = action == "stop" and name == settings["services"]["web"]
        result = control.graceful_stop(name) if graceful else control.act(name, action)
        (reporter.warn if result.outcome == SKIPPED else reporter.info)(result.message)
        results.append(result)
    return results

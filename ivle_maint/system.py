"""Running external commands through sh, on sh 1.14 (bookworm) and 2.x.

Every command is an argument list, never a shell string.  Output is
streamed line by line to a callback and only a bounded tail is kept, so a
verbose jail build never sits in memory.

While an upgrade's steps run (steps_running(): the runner's), the site is
down, and sh returns about 0.1 s after a command with an output callback
ended (its threads look every 0.1 s): every command then runs through
quickrun instead, which returns when the kernel says it ended (its pidfd),
under the same contract.  No step has to know.  So does a command with an
argument that is not UTF-8 (a path's bytes, as os.fsdecode gives them):
sh encodes every argument as strict UTF-8 (1.14 and 2.x alike) and would
fail with a traceback; subprocess passes the path's own bytes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from . import children, quickrun
from .errors import MaintError
from .gates import environment, trusted
from .quickrun import TAIL_LINES, Completed

log = logging.getLogger(__name__)


def preload() -> Any:
    """sh, loaded on the first command run, not with this module: a command
    that runs none (`ivle-maint db status`, `plan`) never pays for it.  An
    upgrade calls this before its first step (upgrade.preload), so nothing
    is imported once the web server is down."""
    import sh  # deferred on purpose, see above

    return sh


def _return_cmd(sh: Any) -> dict[str, Any]:
    """sh 2.0 returns plain strings unless asked for the command object."""
    return {"_return_cmd": True} if int(sh.__version__.split(".")[0]) >= 2 else {}


# Maintainer scripts run with a PATH that has the sbin directories; a shell
# of a person may not: IVLE's programs and init tools are looked up here too.
# Every child's PATH (gates/environment.py).
SBIN_PATH = environment.SBIN_PATH


def which(name: str, path: str | None = None) -> str | None:
    """Absolute path of a command, checked by the gate (gates/trusted.py:
    root's, in a directory only root can write), or None when absent; an
    unsafe one found first is refused (one line, exit status 2)."""
    return trusted.program(name, path)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    keep_stdout: bool = False,
    cwd: str | None = None,
) -> Completed:
    """Run argv, stream stdout+stderr lines to on_line, never raise on status.

    The child's environment is the gate's (gates/environment.child_env):
    env may only add what ivle-maint sets itself (IVLECONF, ...).

    Raises MaintError only when the command cannot be started or times out,
    or when the gate refuses the program: it runs by the path checked.
    """
    if _running.count or not all(_utf8(arg) for arg in argv):
        return quickrun.run(argv, timeout=timeout, on_line=on_line,
                            keep_stdout=keep_stdout, env=env, cwd=cwd)
    sh = preload()
    program = trusted.require_program(argv[0])
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    kept: list[str] = []

    def line(text: str) -> None:
        text = text.rstrip("\n")
        tail.append(text)
        if keep_stdout:
            kept.append(text)
        if on_line is not None:
            on_line(text)

    # Nothing inherited beyond the gate's policy (gates/environment.py).
    mark = children.new_mark()  # what it forks carries it too: a killed run's leftovers
    full_env = environment.child_env(os.environ, {**(env or {}), environment.MARK: mark},
                                     home=environment.home_of(os.geteuid()))
    log.debug("running %s", list(argv))
    # Its own session, and dead with us: see children.py.  One thread forks
    # at a time (children.spawning): a child of a threaded process must not
    # inherit a C library lock another thread holds mid-fork.
    # A fork that never reached exec (children.spawning) ran nothing: once more.
    for _attempt in range(2):
        with children.spawning() as spawn, _unless_stuck(spawn):
            cmd = sh.Command(program)(
                *argv[1:],
                _env=full_env,
                _out=line,
                _err_to_out=True,
                _tty_out=False,
                _in=None,
                _ok_code=list(range(256)),
                _timeout=timeout or None,
                _cwd=cwd,
                _bg=True,
                _bg_exc=False,
                _new_session=True,
                _preexec_fn=children.preexec_for_child(),
                **_return_cmd(sh),
            )
        if not spawn.stuck:
            break
        with suppress(Exception):
            cmd.wait()  # the killed child, reaped
    else:
        raise MaintError(f"{argv[0]} could not be started: its forked child hung before "
                         f"exec twice")
    note = children.record(cmd.pid, argv, mark)
    finished = False
    try:
        try:
            cmd.wait()
            exit_code = int(cmd.exit_code)
        except sh.TimeoutException:
            raise MaintError(f"{argv[0]} did not finish within {timeout:g}s") from None
        except sh.SignalException as exc:  # killed by a signal: negative status
            exit_code = int(exc.exit_code)
        finished = True
    finally:
        if not finished:  # interrupted: the command must not run on without us
            children.end_now(cmd.pid)
        children.forget(note)
    return Completed(tuple(argv), exit_code, "\n".join(kept), tuple(tail))


class _Running:
    """How many step runs are under way (threads run steps side by side)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()


_running = _Running()


def _utf8(arg: str) -> bool:
    """Can sh pass ARG (strict UTF-8)?  A surrogate-escaped byte cannot."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def steps_running() -> Iterator[None]:
    """While the steps run: every command returns the moment it ends."""
    with _running.lock:
        _running.count += 1
    try:
        yield
    finally:
        with _running.lock:
            _running.count -= 1


@contextmanager
def _unless_stuck(spawn: children.Spawn) -> Iterator[None]:
    """Whatever sh makes of a child killed before exec is not the command's
    failure: the caller starts it again."""
    try:
        yield
    except Exception:
        if not spawn.stuck:
            raise


def check(argv: Sequence[str], **kwargs: Any) -> Completed:
    """run() that turns a nonzero status into a MaintError with the output tail."""
    done = run(argv, **kwargs)
    if not done.ok:
        last = done.tail[-1] if done.tail else "no output"
        raise MaintError(f"{' '.join(argv)} failed with status {done.exit_code}: {last}")
    return done

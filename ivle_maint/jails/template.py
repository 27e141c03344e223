"""IVLE's upgrade procedure, "Upgrading the jail": ``ivle-buildjail -u`` on the master.

ivle-buildjail refreshes template_build (apt inside the jail: slow and
verbose), then rsyncs it over template.  Its output goes to the log line
by line and is never held in memory (only a short tail is kept, for the
error message); a terminal shows a heartbeat with the lines seen and the
time elapsed, so a long, quiet apt download does not look like a hang.

Afterwards rebuild_template checks what the tool claims: the template
exists and is not empty, and, when template_build exists, every entry of
the two trees matches (type, mode, owner, size, whole-second mtime, link target),
which is what a completed ``rsync -a --delete`` leaves.

The helpers here (root check, command from the settings, the run with a
heartbeat) also serve users.py: both wrap IVLE's own jail tools.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import system
from ..config import IvleConf, Settings
from ..errors import MaintError
from ..gates.mounted import refuse_mounts_in
from ..gates.rewrite import write_state_file
from ..logfile import BoundedOutput
from ..output import Reporter
from ..safepaths import read_nofollow

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
SHOWN_TAIL = 5  # output lines in the one-line error (the log has more)
SHOWN_DIFFERENCES = 3


# ---------------------------------------------------------------- shared


def require_root(tool: str) -> None:
    """IVLE's jail tools refuse to run unless root: say so before starting one."""
    if os.geteuid() != 0:
        raise MaintError(f"{tool} must run as root (uid 0), not uid {os.geteuid()}; "
                         f"run ivle-maint as root")


def command_argv(settings: Settings, key: str) -> list[str]:
    """[commands] KEY: the program, whole, as the preflight checked it
    (config's command check: never empty)."""
    return [str(settings["commands"][key])]


def short_name(argv: list[str] | tuple[str, ...]) -> str:
    return shlex.join([os.path.basename(argv[0]), *argv[1:]])


@dataclass(frozen=True)
class ToolRun:
    """One run of an IVLE tool: status, output lines seen, the last of them."""

    argv: tuple[str, ...]
    exit_code: int
    lines: int
    seconds: float
    tail: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def name(self) -> str:
        """The command without its directory, for progress and summaries."""
        return short_name(self.argv)

    def failure(self) -> str:
        """One line: the command, its status and its last lines of output."""
        status = (f"was killed by signal {-self.exit_code}" if self.exit_code < 0
                  else f"failed with status {self.exit_code}")
        shown = " | ".join(line.strip() for line in self.tail[-SHOWN_TAIL:] if line.strip())
        return f"{self.command} {status}; last output: {shown or '(none)'}"


@contextmanager
def heartbeat(beat: Callable[[], None], interval: float) -> Iterator[None]:
    """Call BEAT every INTERVAL seconds in a thread while the block runs.

    Only this thread calls the reporter while a tool runs (sh delivers
    output lines on threads of its own), so progress lines never interleave.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat()
            except Exception:  # a broken progress line must not stop the tool
                log.exception("progress report failed")

    thread = threading.Thread(target=loop, name="ivle-maint-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_tool(argv: list[str], *, ivle_conf_dir: Path, timeout: float,
             on_line: Callable[[str], None] | None = None,
             beat: Callable[[int, float], None] | None = None,
             interval: float = HEARTBEAT_SECONDS) -> ToolRun:
    """Run an IVLE tool with IVLECONF set, every output line to the log.

    BEAT(lines seen, seconds elapsed) is called every INTERVAL seconds.
    """
    program = argv[0].rsplit("/", 1)[-1]
    seen = 0
    started = time.monotonic()

    logged = BoundedOutput(lambda text: log.info("%s: %s", program, text))

    def line(text: str) -> None:
        nonlocal seen
        seen += 1
        logged(text)
        if on_line is not None:
            on_line(text)

    def tick() -> None:
        if beat is not None:
            beat(seen, time.monotonic() - started)

    with heartbeat(tick, interval), logged:
        done = system.run(argv, env={"IVLECONF": str(ivle_conf_dir)}, on_line=line,
                          timeout=timeout or None)
    elapsed = time.monotonic() - started
    run = ToolRun(tuple(argv), done.exit_code, seen, elapsed, done.tail)
    log.info("%s exited %s after %.1fs and %d lines of output", run.command, run.exit_code,
             elapsed, seen)
    if not done.ok:
        for text in done.tail:
            log.error("%s: %s", program, text)
    return run


# ---------------------------------------------------------------- the check


def _signature(path: str, st: os.stat_result) -> tuple[Any, ...]:
    kind = stat.S_IFMT(st.st_mode)
    base = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if stat.S_ISREG(kind):
        return (*base, st.st_size, int(st.st_mtime))
    if stat.S_ISLNK(kind):
        return (*base, os.readlink(path))
    if stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
        return (*base, st.st_rdev)
    return base


def _entries(top: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) of every entry below TOP, symlinks not followed."""
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(top, rel)) as listing:
            for entry in listing:
                sub = os.path.join(rel, entry.name)
                yield sub, entry
                if entry.is_dir(follow_symlinks=False):
                    pending.append(sub)


def compare_trees(build: Path, template: Path) -> tuple[int, list[str]]:
    """(entries compared, the first differences) between two jail trees."""
    theirs = {rel: _signature(e.path, e.stat(follow_symlinks=False))
              for rel, e in _entries(str(template))}
    differences: list[str] = []
    count = 0
    for rel, entry in _entries(str(build)):
        count += 1
        mine = _signature(entry.path, entry.stat(follow_symlinks=False))
        other = theirs.pop(rel, None)
        if other is None:
            differences.append(f"{rel} missing from the template")
        elif other != mine:
            differences.append(f"{rel} differs")
    differences += [f"{rel} only in the template" for rel in sorted(theirs)]
    return count, differences


# ------------------------------------------------------------- the rebuild


@dataclass(frozen=True)
class JailRebuildResult:
    """What rebuild_template did and what it checked."""

    run: ToolRun
    template: Path
    compared: int | None  # entries checked against template_build; None: no such tree

    @property
    def summary(self) -> str:
        checked = (f"template matches template_build ({self.compared} entries)"
                   if self.compared is not None else "template present")
        return (f"{self.run.name}: {self.run.lines} lines of output in "
                f"{self.run.seconds:.1f}s; {checked}")

    @property
    def metrics(self) -> dict[str, Any]:
        return {"output_lines": self.run.lines, "entries": self.compared,
                "tool_seconds": round(self.run.seconds, 3)}


def check_template(template: Path, template_build: Path | None) -> int | None:
    """Raise MaintError unless the template is what a completed build leaves."""
    if not template.is_dir():
        raise MaintError(f"jail template {template} does not exist after ivle-buildjail")
    with os.scandir(template) as listing:
        if next(listing, None) is None:
            raise MaintError(f"jail template {template} is empty after ivle-buildjail")
    if template_build is None or not template_build.is_dir():
        return None
    count, differences = compare_trees(template_build, template)
    if differences:
        shown = "; ".join(differences[:SHOWN_DIFFERENCES])
        more = len(differences) - SHOWN_DIFFERENCES
        more_text = f" and {more} more" if more > 0 else ""
        raise MaintError(f"jail template {template} does not match {template_build} after "
                         f"ivle-buildjail: {shown}{more_text}")
    return count


def rebuild_template(settings: Settings, reporter: Reporter, *, ivle_conf: IvleConf | None = None,
                 interval: float = HEARTBEAT_SECONDS) -> JailRebuildResult:
    """Run ``ivle-buildjail -u`` ([commands] buildjail), then check the template."""
    argv = [*command_argv(settings, "buildjail"), "-u"]
    require_root(shlex.join(argv))
    conf = ivle_conf if ivle_conf is not None else settings.ivle_conf()
    jails = conf.conf["paths"]["jails"]
    template, build = Path(jails["template"]), Path(jails["template_build"])
    # Its rsync --delete would go through a home bound (or propagated) in either.
    for tree in (template, build):
        refuse_mounts_in(tree, f"could not run {shlex.join(argv)}")
    label = short_name(argv)

    def beat(lines: int, seconds: float) -> None:
        reporter.progress(f"{label} ({seconds:.0f}s), output lines", lines)

    run = run_tool(argv, ivle_conf_dir=conf.path.parent,
                   timeout=float(settings["commands"]["timeout"]), beat=beat,
                   interval=interval)
    reporter.progress(f"{label} ({run.seconds:.0f}s), output lines", run.lines, run.lines)
    if run.exit_code != 0:
        raise MaintError(run.failure())
    compared = check_template(template, build)
    return JailRebuildResult(run, template, compared)


# ------------------------------------------------------------ its inputs

# [paths] state: the inputs the jail template was last built from
# (release_needs.py computes them; written only after a rebuild checked).
INPUTS_RECORD = "jail-inputs.json"


def inputs_record_path(settings: Settings) -> Path:
    return settings.path_of("state") / INPUTS_RECORD


def recorded_inputs(settings: Settings) -> dict[str, str] | None:
    """What the last checked rebuild was built from, or None when unknown
    (no record, or one this version cannot read: a rebuild is then owed)."""
    try:
        data = json.loads(read_nofollow(inputs_record_path(settings)).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s): the jail counts as changed",
                    inputs_record_path(settings), exc)
        return None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return None
    return data


def forget_inputs(settings: Settings) -> None:
    """Before a rebuild: a build that fails half-way leaves a template made
    of no known inputs, which no record may vouch for."""
    path = inputs_record_path(settings)
    if path.exists():
        path.unlink()


def record_inputs(settings: Settings, inputs: dict[str, str]) -> None:
    """Remember INPUTS after a rebuild whose result was checked."""
    text = json.dumps(inputs, indent=1, sort_keys=True) + "\n"
    write_state_file(inputs_record_path(settings), text.encode(), mode=0o644)

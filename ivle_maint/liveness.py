"""Is an ivle-maint run alive?  Decided from facts that name one process
uniquely, never from a hostname and a pid looked up in /proc.

A runner is (boot, pidns, pid, start):

    boot    this kernel's boot id (/proc/sys/kernel/random/boot_id), first
            48 bits: a new one at every boot, another on every machine
            (and in a systemd-nspawn container, which gets its own)
    pidns   the inode of its PID namespace (/proc/self/ns/pid)
    pid     its pid in that namespace
    start   its start time in clock ticks after boot (/proc/PID/stat,
            field 22), taken back to the initial time namespace

Two hosts may share a hostname, two containers a machine id (cloned
images do), a pid is reused: the four together are not.

The decision, from the process that asks (judge):

    ALIVE       the same boot, and a process of that PID namespace with
                that pid and that start time is visible from here
    DEAD        the same boot, its PID namespace is visible from here
                (it is ours, a process of it is seen, or we see every
                process of this kernel: the initial PID namespace) and no
                such process is in it
    UNKNOWABLE  another boot (another machine, a container with its own
                boot id, or a reboot of a cloned machine), a PID namespace
                not visible from here, or /proc not readable: said so with
                where to look, never "dead"

A runner shows itself as a token "BOOT.PIDNS.PID.START" (hex, pid in
decimal): in its database session's application_name (db/connect.py),
which db/lock.py reads for the migration lock's holder, and in its row of
the cluster table (cluster/presence.py), which `cluster status` and
`cluster forget` judge.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PROC = Path("/proc")
INIT_PIDNS = 0xEFFFFFFC  # the kernel's fixed inode of the initial PID namespace
BOOT_CHARS = 12  # 48 bits of the boot id: enough to tell boots apart, short for 63 chars

_TOKEN = re.compile(rf"([0-9a-f]{{{BOOT_CHARS}}})\.([0-9a-f]{{1,16}})\.(\d{{1,10}})\."
                    r"([0-9a-f]{1,16})")


class Verdict(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWABLE = "unknowable"


@dataclass(frozen=True)
class Runner:
    boot: str
    pidns: int
    pid: int
    start: int

    def token(self) -> str:
        return f"{self.boot}.{self.pidns:x}.{self.pid}.{self.start:x}"


def parse(text: str | None) -> Runner | None:
    """The runner whose token is in TEXT (an application_name, a row), or None."""
    found = _TOKEN.search(text or "")
    if found is None:
        return None
    return Runner(found.group(1), int(found.group(2), 16), int(found.group(3)),
                  int(found.group(4), 16))


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    text: str  # for a person: what was seen and, when unknowable, how to check


def _read(path: Path) -> str:
    with open(path, encoding="ascii", errors="replace") as handle:
        return handle.read(4096)


def boot_id() -> str:
    return _read(BOOT_ID).strip().replace("-", "").lower()[:BOOT_CHARS]


def _ns_inode(link: str) -> int:
    # "pid:[4026531836]"
    return int(link.rsplit("[", 1)[1].rstrip("]"))


def _boottime_offset_ticks(proc: Path) -> int:
    """The boottime offset of the time namespace of the process at PROC, in ticks."""
    try:
        text = _read(proc / "timens_offsets")
    except OSError:
        return 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("boottime", "7"):
            nanos = int(parts[1]) * 1_000_000_000 + int(parts[2])
            return nanos * os.sysconf("SC_CLK_TCK") // 1_000_000_000
    return 0


def _start_ticks(proc: Path) -> int:
    """Field 22 of PROC/stat, in the initial time namespace's terms.  The
    kernel shows it in the reader's time namespace: take that offset off."""
    stat = _read(proc / "stat")
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return -1
    return int(fields[19]) - _boottime_offset_ticks(PROC / "self")


def me() -> Runner:
    """This process."""
    return Runner(boot_id(), _ns_inode(os.readlink(PROC / "self" / "ns" / "pid")), os.getpid(),
                  _start_ticks(PROC / "self"))


def token() -> str:
    """This process's token; '' where /proc cannot say (then it is unknowable to others)."""
    try:
        return me().token()
    except (OSError, ValueError, IndexError):
        return ""


def _nspids(proc: Path) -> list[int]:
    """PROC's pid in our PID namespace, then in each one nested below it."""
    for line in _read(proc / "status").splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


# A process that ended while we looked: its /proc entry gone before the
# open (ENOENT), or after it and before the read (ESRCH, which any student
# can time by ending short-lived processes): gone, never "unreadable".
_GONE = (FileNotFoundError, ProcessLookupError)


@dataclass(frozen=True)
class _Seen:
    found: bool  # the runner itself
    namespace_seen: bool  # any process of its PID namespace
    blind: bool  # some process could not be read


def _look(runner: Runner) -> _Seen:
    """A runner of another PID namespace: every process of ours, and of those
    nested below ours, whose namespace is the runner's."""
    found = seen_ns = blind = False
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        proc = PROC / entry.name
        try:
            nspids = _nspids(proc)
            try:
                pidns = _ns_inode(os.readlink(proc / "ns" / "pid"))
            except PermissionError:
                # Its namespace is hidden from us (another user namespace's
                # process); one in our own cannot be the runner.
                blind = blind or len(nspids) > 1
                continue
            if pidns != runner.pidns:
                continue
            seen_ns = True
            if nspids and nspids[-1] == runner.pid and _start_ticks(proc) == runner.start:
                found = True
                break
        except _GONE:
            continue  # exited while we looked
        except (OSError, ValueError, IndexError):
            blind = True
    return _Seen(found, seen_ns, blind)


def _look_here(runner: Runner) -> _Seen:
    """A runner of this PID namespace: its own /proc entry, if any."""
    proc = PROC / str(runner.pid)
    try:
        return _Seen(_start_ticks(proc) == runner.start, True, False)
    except _GONE:
        return _Seen(False, True, False)
    except (OSError, ValueError, IndexError):
        return _Seen(False, True, True)


def judge(runner: Runner | None, where: str = "") -> Judgement:
    """ALIVE, DEAD or UNKNOWABLE from this process, with the reason.

    WHERE names the runner's machine for a person (its hostname as it
    said, a client address), used when the answer is unknowable."""
    if runner is None:
        return Judgement(Verdict.UNKNOWABLE, "it does not say which process it is (an older "
                         "ivle-maint)" + _check_there(None, where))
    try:
        mine = me()
        if str(os.getpid()) != os.readlink(PROC / "self"):
            raise OSError("/proc is not this PID namespace's")
    except (OSError, ValueError, IndexError) as exc:
        return Judgement(Verdict.UNKNOWABLE, f"/proc cannot say ({exc})"
                         + _check_there(runner, where))
    if runner.boot != mine.boot:
        return Judgement(Verdict.UNKNOWABLE, "it runs on another machine or boot (boot id "
                         f"{runner.boot}..., here {mine.boot}...)" + _check_there(runner, where))
    if runner == mine:
        return Judgement(Verdict.ALIVE, "it is this process")
    seen = _look_here(runner) if runner.pidns == mine.pidns else _look(runner)
    ns = "this PID namespace" if runner.pidns == mine.pidns else \
        f"PID namespace {runner.pidns}"
    if seen.found:
        return Judgement(Verdict.ALIVE, f"pid {runner.pid} of {ns} on this machine runs")
    visible = runner.pidns == mine.pidns or seen.namespace_seen or mine.pidns == INIT_PIDNS
    if seen.blind or not visible:
        why = "some processes could not be read" if seen.blind else \
            f"PID namespace {runner.pidns} is not visible from here"
        return Judgement(Verdict.UNKNOWABLE, why + _check_there(runner, where))
    return Judgement(Verdict.DEAD, f"pid {runner.pid} of {ns} on this machine has exited")


def _check_there(runner: Runner | None, where: str) -> str:
    machine = f"on {where}" if where else "where it runs"
    if runner is None:
        return f": check {machine} whether it still runs"
    return (f": check {machine} whether pid {runner.pid} (of PID namespace {runner.pidns}) "
            f"still runs (ps -p {runner.pid} -o lstart,args)")

"""Text from outside (gates/text.py): a student's command line, a migration's
file name, an SQL error, mount names.  Whatever they hold, what ivle-maint
writes to the terminal, the log and the journal has no raw control
character and no line that starts at column 0 with a forged
`ivle-maint: error:`; the hostile parts are shown as visible escapes.

Each case runs real ivle-maint processes on a sandbox node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint import mountinfo
from ivle_sandbox.releases import RELEASES
from support.abuse_helpers import one_error_line
from support.upgrade_helpers import REPO, at_version_1_0, cli, journal, postinst, preinst, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

FORGED = "\nivle-maint: error: forged"
TITLE = "\x1b]0;title\x07"  # OSC: sets the terminal's title
SHOWN = ("\\nivle-maint: error: forged", "\\x1b]0;title\\x07")
SLEEP = "import time; print('ready', flush=True); time.sleep(600)"


def assert_nothing_raw(text: str, where: str) -> None:
    """No control character but line ends; no line forged at column 0."""
    for line in text.split("\n"):
        assert line.isprintable(), f"{where}: {line!r}"
        assert not line.startswith("ivle-maint: error: forged"), f"{where}: {text}"


def log_text(node: Any, pattern: str = "upgrade-*") -> str:
    return "".join(p.read_text() for p in sorted(node.maint_log_dir.glob(pattern)))


@pytest.fixture
def hostile_console(node: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A student's process in their jail whose command line forges a line."""
    user = node.users[0]
    proc = subprocess.Popen([sys.executable, "-c", SLEEP, FORGED, TITLE],
                            cwd=node.jail(user.login) / "home" / user.login, user=user.unixid,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_command_line_that_forges_a_line_is_escaped_in_consoles_list_and_stop(
        node: Any, hostile_console: subprocess.Popen[bytes]) -> None:
    listed = cli(node, "consoles", "list")
    assert listed.returncode == 0, listed.stderr
    assert_nothing_raw(listed.stdout, "consoles list")
    line = next(ln for ln in listed.stdout.splitlines() if str(hostile_console.pid) in ln)
    assert all(part in line for part in SHOWN), line
    stopped = cli(node, "-v", "consoles", "stop")  # -v: each process, as the log has it
    assert stopped.returncode == 0, stopped.stderr
    assert hostile_console.poll() is not None
    assert_nothing_raw(stopped.stderr, "consoles stop")
    lines = stopped.stderr.splitlines()
    assert any(all(part in ln for part in SHOWN) for ln in lines), stopped.stderr


def test_a_command_line_that_forges_a_line_is_escaped_in_the_upgrade_and_its_log(
        node: Any, hostile_console: subprocess.Popen[bytes]) -> None:
    at_version_1_0(node)
    done = preinst(node)
    assert done.returncode == 0, done.stderr
    assert hostile_console.poll() is not None
    assert_nothing_raw(done.stderr, "preinst")  # one line per jail; the log names each
    log = log_text(node)
    assert_nothing_raw(log, "log")
    assert any(all(part in ln for part in SHOWN) for ln in log.splitlines()), log


RAISE = ("DO $$ BEGIN RAISE EXCEPTION E'broken\\nivle-maint: error: forged \\x1b]0;title\\x07';"
         " END $$;\n")


def test_an_sql_error_with_control_characters_is_escaped_everywhere(node: Any) -> None:
    """stderr, the log, the journal and `status` show it escaped."""
    at_version_1_0(node)
    assert preinst(node).returncode == 0
    unpack(node, "1.1", {**RELEASES["1.1"], "20100216-01.sql": RAISE})
    done = postinst(node)
    assert done.returncode == 1
    assert "error: forged \\x1b]0;title\\x07" in one_error_line(done)
    assert_nothing_raw(done.stderr, "postinst")
    log = log_text(node)
    assert_nothing_raw(log, "log")
    assert "error: forged \\x1b]0;title\\x07" in log
    error = journal(node)["steps"]["migrate"]["error"]
    assert error.isprintable() and "error: forged \\x1b]0;title\\x07" in error
    status = cli(node, "status")
    assert status.returncode == 0, status.stderr
    assert_nothing_raw(status.stdout, "status")
    assert "error: forged \\x1b]0;title\\x07" in status.stdout


def test_an_old_journal_error_with_control_characters_is_escaped_by_status(node: Any) -> None:
    """A journal written before the gate (or by hand) still shows escaped."""
    at_version_1_0(node)
    assert preinst(node).returncode == 0
    path = node.state_dir / "journal" / "1.0_to_1.1.json"
    text = path.read_text().replace('"error": null', '"error": "x\\nivle-maint: error: forged'
                                    '\\u001b]0;title\\u0007"', 1)
    text = text.replace('"status": "done"', '"status": "failed"', 1)
    path.write_text(text)
    status = cli(node, "status")
    assert status.returncode == 0, status.stderr
    assert_nothing_raw(status.stdout, "status")
    assert all(part in status.stdout for part in SHOWN), status.stdout


def test_a_migration_file_name_with_control_characters_is_one_escaped_line(node: Any) -> None:
    at_version_1_0(node)
    name = f"2010{TITLE}0216{FORGED}.sql"
    unpack(node, "1.1", {**RELEASES["1.1"], name: "SELECT 1;\n"})
    done = cli(node, "db", "status")
    assert done.returncode == 1
    line = one_error_line(done)
    assert "not a migration file name" in line and "\\x1b]0;title\\x07" in line, line
    assert_nothing_raw(done.stderr, "db status")


def test_a_migration_file_name_that_is_not_utf8_is_shown_never_a_traceback(node: Any) -> None:
    at_version_1_0(node)
    unpack(node, "1.1")
    Path(os.fsdecode(os.fsencode(node.migrations) + b"/2010\x9b\xff0216-01.sql")).write_text(
        "SELECT 1;\n")
    env = {**os.environ, **node.env, "PYTHONPATH": str(REPO),
           "PYTHONIOENCODING": "utf-8:strict"}  # what a UTF-8 locale gives
    done = subprocess.run([sys.executable, "-m", "ivle_maint", "db", "status"], env=env,
                          capture_output=True, stdin=subprocess.DEVNULL, check=False)
    assert b"Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert b"2010\\x9b\\xff0216-01.sql" in done.stderr, done.stderr


def test_a_command_line_argument_with_control_characters_is_escaped_by_argparse(
        node: Any) -> None:
    done = cli(node, "status", FORGED + TITLE)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert_nothing_raw(done.stderr, "usage error")
    assert "\\x1b]0;title\\x07" in done.stderr


def test_mounts_list_escapes_every_control_and_undecodable_byte(node: Any) -> None:
    """ESC, a C1 CSI (UTF-8 or a raw byte): the list can neither drive the
    terminal nor fail under a strict UTF-8 locale."""
    names = [b"x\x1b[2Jy", "z\u009bw".encode(), b"raw\x9bbyte"]
    jails = [os.fsencode(node.jail_mounts) + b"/" + name for name in names]
    for jail in jails:
        os.mkdir(jail)
        subprocess.run([b"mount", b"--bind", os.fsencode(node.template), jail], check=True)
    try:
        listed_and_unmounted(node, jails)
    finally:
        for jail in jails:
            subprocess.run([b"umount", jail], stderr=subprocess.DEVNULL, check=False)


def listed_and_unmounted(node: Any, jails: list[bytes]) -> None:
    env = {**os.environ, **node.env, "PYTHONPATH": str(REPO),
           "PYTHONIOENCODING": "utf-8:strict"}  # what a UTF-8 locale gives
    listed = subprocess.run([sys.executable, "-m", "ivle_maint", "mounts", "list"], env=env,
                            capture_output=True, stdin=subprocess.DEVNULL, check=False)
    assert listed.returncode == 0 and b"Traceback" not in listed.stderr, listed.stderr
    for bad in (b"\x1b", b"\x9b"):
        assert bad not in listed.stdout
    points = {mountinfo.unescape(line.split(b"\t")[0]) for line in listed.stdout.splitlines()}
    assert {os.fsdecode(jail) for jail in jails} <= points
    assert cli(node, "consoles", "stop").returncode == 0
    done = cli(node, "mounts", "unmount")  # the syscall gets the name's bytes
    assert done.returncode == 0, done.stderr
    assert node.mounts() == []


def test_a_bugs_traceback_quoting_outside_text_is_escaped_and_indented(tmp_path: Path) -> None:
    """Tracebacks are for bugs; even then nothing raw and nothing at column 0."""
    # python3-debian: dpkg's preinst hook loads it before it reads the settings.
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian" / "__init__.py").write_text(f"raise RuntimeError({FORGED + TITLE!r})\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}",
           "IVLE_MAINT_CONF": str(tmp_path / "absent.conf")}
    done = subprocess.run([sys.executable, "-m", "ivle_maint", "hook", "preinst", "upgrade",
                           "1.0", "1.1"], check=False, env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert_nothing_raw(done.stderr, "traceback")
    first, *rest = done.stderr.rstrip("\n").split("\n")
    assert first == "ivle-maint: internal error (a bug):"
    assert rest and all(line.startswith("  ") for line in rest), done.stderr
    assert "\n  ivle-maint: error: forged\\x1b]0;title\\x07\n" in done.stderr


# -- the cluster table: every field a node (or the table's writer) chose ------

_FIELD = st.one_of(st.text(max_size=12), st.lists(st.sampled_from(
    ["\n", "\r", "\u2028", "\x85", TITLE, "\n  ", FORGED, "alpha", "\u202e"]),
    max_size=4).map("".join))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_FIELD, _FIELD, _FIELD, _FIELD, _FIELD,
                          st.sampled_from(["master", "slave", "both"])),
                min_size=1, max_size=3))
def test_cluster_status_prints_one_line_per_row_whatever_a_field_holds(
    rows: list[tuple[str, ...]],
) -> None:
    """A node's name, host, note, version and media come from the database:
    a newline in one never ends the table's line, nor forges one."""
    import contextlib
    import io

    from ivle_maint.cluster.admin import ClusterStatus
    from ivle_maint.cluster.table import NodeRow
    from ivle_maint.commands.cluster import _print_table

    def printed(fields: list[tuple[str, ...]]) -> list[str]:
        nodes = [NodeRow(name=n or "n", role=role, host=h, instance="i", version=v,
                         serving=None, target=None, phase="waiting", step=None, media=m,
                         note=note or "x") for n, h, v, m, note, role in fields]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            _print_table(ClusterStatus(nodes, set()))
        return out.getvalue().split("\n")

    plain = [("f", "f", "f", "f", "f", row[5]) for row in rows]
    lines = printed(rows)
    assert len(lines) == len(printed(plain)), lines
    assert all(line.isprintable() for line in lines), lines
    assert not any(line.startswith("ivle-maint:") for line in lines), lines



def _terminal_width(line: str) -> int:
    """Columns the C library's wcswidth (C.UTF-8) gives LINE: what a terminal uses."""
    import ctypes
    import locale

    libc = ctypes.CDLL("libc.so.6")
    libc.setlocale(locale.LC_CTYPE, b"C.UTF-8")
    columns = int(libc.wcswidth(ctypes.c_wchar_p(line), len(line)))
    assert columns >= 0, line
    return columns


# Wide (CJK, full-width, emoji), combining marks, Latin and ASCII.
_SHOWN = st.text(st.sampled_from("ab-1.\u00e9\u0301\u0308\u0327\u65e5\u672c\u8a9e\uff21"
                                 "\U0001f600\u3042\ud55c"), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_SHOWN, _SHOWN, _SHOWN), min_size=1, max_size=4))
def test_cluster_status_columns_line_up_as_a_terminal_shows_them(
    rows: list[tuple[str, str, str]],
) -> None:
    """Node names, versions and hosts of wide characters or combining marks:
    each column starts at the same terminal column on every line."""
    import contextlib
    import io

    from ivle_maint.cluster.admin import ClusterStatus
    from ivle_maint.cluster.table import NodeRow
    from ivle_maint.commands.cluster import _print_table

    nodes = [NodeRow(name=n, role="slave", host=h, instance="i", version=v, serving=None,
                     target=None, phase="idle", step=None, media=None, note="")
             for n, v, h in rows]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _print_table(ClusterStatus(nodes, set()))
    table = out.getvalue().splitlines()[:len(rows) + 1]
    head = table[0]
    starts = [_terminal_width(head[:head.index(word)]) for word in ("ROLE", "VERSION", "HOST")]
    for line, (name, version, _host) in zip(table[1:], rows, strict=True):
        assert line.startswith(name)
        role = line.index("slave", len(name))
        assert _terminal_width(line[:role]) == starts[0], table
        assert _terminal_width(line[:line.index(version, role + 5)]) == starts[1], table


def test_a_student_command_line_of_a_megabyte_is_shown_bounded(node: Any) -> None:
    """The command line is the student's to choose, up to the kernel's
    bound: each place that names the process (consoles list, -v, the log)
    shows its start and how much was cut, never the megabyte."""
    user = node.users[0]
    huge = "A" * 120_000 + FORGED
    proc = subprocess.Popen([sys.executable, "-c", SLEEP, huge, huge],
                            cwd=node.jail(user.login) / "home" / user.login, user=user.unixid,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        listed = cli(node, "consoles", "list")
        stopped = cli(node, "-v", "consoles", "stop")
        assert listed.returncode == 0 and stopped.returncode == 0, stopped.stderr
        for out in (listed.stdout, stopped.stderr):
            assert_nothing_raw(out, "output")
            named = [line for line in out.splitlines() if str(proc.pid) in line]
            assert named and all(len(line) < 1000 for line in named), len(max(named, key=len))
            assert any("more characters]" in line for line in named)
    finally:
        proc.kill()
        proc.wait()

"""Bounded logs: a command's output, the number of files, their modes."""

from __future__ import annotations

import errno
import gzip
import os
import time

import pytest

from ivle_maint.logfile import BoundedOutput, prune, run_log


def test_short_output_is_kept_whole():
    seen: list[str] = []
    with BoundedOutput(seen.append, lines=3) as out:
        for i in range(6):
            out(f"line {i}")
    assert seen == [f"line {i}" for i in range(6)]


def test_long_output_keeps_head_and_tail_and_counts_the_rest():
    seen: list[str] = []
    with BoundedOutput(seen.append, lines=3) as out:
        for i in range(100):
            out(f"line {i}")
    assert seen[:3] == ["line 0", "line 1", "line 2"]
    assert seen[-3:] == ["line 97", "line 98", "line 99"]
    assert len(seen) == 7
    assert seen[3].startswith("[... 94 lines (") and "left out" in seen[3]


def test_zero_keeps_everything_and_long_lines_are_cut():
    seen: list[str] = []
    with BoundedOutput(seen.append, lines=0) as out:
        for i in range(1000):
            out(str(i))
        out("x" * 10_000)
    assert len(seen) == 1001 and "left out" not in "".join(seen[:-1])
    assert len(seen[-1]) < 2100 and seen[-1].endswith("[... 8000 more characters]")


def test_prune_keeps_the_newest_and_compresses_all_but_the_last(tmp_path):
    for i in range(6):
        path = tmp_path / f"run-{i}.log"
        path.write_text(f"log {i}\n")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    prune(tmp_path, keep=4)  # room for the run about to start
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["run-3.log.gz", "run-4.log.gz", "run-5.log"]
    with gzip.open(tmp_path / "run-3.log.gz", "rt") as handle:
        assert handle.read() == "log 3\n"


def test_run_log_makes_a_new_file_per_run_even_within_a_second(tmp_path):
    with run_log(tmp_path, "x") as first:
        pass
    with run_log(tmp_path, "x") as second:
        pass
    assert first != second and second.exists()
    assert second.stat().st_mode & 0o777 == 0o640


def test_compression_in_chunks_gives_back_exactly_the_log(tmp_path):
    """Whatever the log holds and however it falls into chunks."""
    from unittest import mock

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ivle_maint import logfile

    @settings(max_examples=50, deadline=None)
    @given(data=st.binary(max_size=5000), chunk=st.integers(1, 700))
    def case(data: bytes, chunk: int) -> None:
        path = tmp_path / "a.n000001.log"
        path.write_bytes(data)
        with mock.patch.object(logfile, "CHUNK", chunk):
            logfile._compress(path)
        packed = path.with_name(path.name + ".gz")
        assert gzip.decompress(packed.read_bytes()) == data and not path.exists()
        packed.unlink()

    case()


def test_a_rotation_killed_at_any_point_loses_no_log_and_leaves_nothing_behind(tmp_path):
    """Killed at each step of rotation and compression in turn, then run
    again: every log kept is there whole (plain, or a gzip that gives it
    back), only logs and nothing else stays in the directory (a killed
    compression's temporary file, as big as the log, is not kept for ever),
    and the number of logs is bounded as [logs] keep says."""
    import shutil

    from support.kill_points import killed_at

    contents = {f"run-20260101T00000{i}Z.n{i:06d}.log": (f"log {i}\n".encode() * (i * 90_000))
                for i in range(1, 6)}  # up to 3.6 MB: compressed in several chunks
    keep = 4
    newest = sorted(contents)[-(keep - 1):]
    point = 0
    while True:
        point += 1
        logs = tmp_path / f"point{point}"
        logs.mkdir()
        for name, data in contents.items():
            (logs / name).write_bytes(data)
        killed = killed_at(point, "from pathlib import Path\nfrom ivle_maint.logfile import prune",
                           "prune(Path(sys.argv[2]), int(sys.argv[3]))", str(logs), str(keep))
        prune(logs, keep)  # the next run's rotation
        found = sorted(p.name for p in logs.iterdir())
        assert found == [newest[0] + ".gz", newest[1] + ".gz", newest[2]], (point, found)
        for name in newest:
            kept = (logs / name).read_bytes() if name == newest[-1] else \
                gzip.decompress((logs / (name + ".gz")).read_bytes())
            assert kept == contents[name], (point, name)
        shutil.rmtree(logs)
        if not killed:
            break
    assert point > 20  # the kills did fall inside the rotation


ODD = ["plain", "hard link kept elsewhere", "another user's", "writable by others",
       "immutable", "empty"]


def test_no_log_found_in_the_directory_stops_the_run_nor_loses_a_log(tmp_path):
    """Whatever the earlier logs are (a second name kept by a backup tool's
    hard link, another user's, writable by others, immutable, empty), and
    which of them rotation removes or compresses: the run's log is made
    (a log never stops a run, an upgrade under dpkg least), each log kept
    is whole (plain, or a gzip that gives it back) or left as it was, and
    another name of a log keeps its content."""
    import shutil
    import subprocess

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None)
    @given(kinds=st.lists(st.sampled_from(ODD), min_size=1, max_size=5),
           keep=st.integers(1, 6))
    def case(kinds, keep):
        logs, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"
        logs.mkdir(mode=0o750)
        elsewhere.mkdir()
        contents = {}
        try:
            for i, kind in enumerate(kinds, 1):
                path = logs / f"run-20260101T00000{i}Z.n{i:06d}.log"
                data = b"" if kind == "empty" else f"log {i}\n".encode() * 1000
                path.write_bytes(data)
                path.chmod(0o640)
                contents[path.name] = data
                if kind == "hard link kept elsewhere":
                    os.link(path, elsewhere / path.name)
                elif kind == "another user's":
                    os.chown(path, 65534, 65534)
                elif kind == "writable by others":
                    path.chmod(0o666)
                elif kind == "immutable":
                    subprocess.run(["chattr", "+i", str(path)], check=True)
            with run_log(logs, "upgrade", keep=keep) as made:
                assert made.exists()
            for name, data in contents.items():
                plain, packed = logs / name, logs / (name + ".gz")
                if plain.exists():
                    assert plain.read_bytes() == data, name
                elif packed.exists():
                    assert gzip.decompress(packed.read_bytes()) == data, name
            for other in elsewhere.iterdir():
                assert other.read_bytes() == contents[other.name]
            assert not [p for p in logs.iterdir() if p.name.endswith(".tmp")]
        finally:
            subprocess.run(["chattr", "-R", "-i", str(logs)], check=False,
                           capture_output=True)
            shutil.rmtree(logs)
            shutil.rmtree(elsewhere)

    case()


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_disk_that_fails_at_any_step_of_making_the_log_never_stops_the_run(tmp_path, code):
    """Each step of a run's log in turn (rotation, compression, choosing the
    new log's name, creating it, giving it to adm) fails with an I/O error
    or a full disk: the run goes on (at most unlogged, said on stderr),
    and every earlier log is whole, plain or compressed."""
    import shutil

    from support.kill_points import failed_at

    contents = {f"run-20260101T00000{i}Z.n{i:06d}.log": f"log {i}\n".encode() * 50_000
                for i in range(1, 5)}
    body = ("with run_log(Path(sys.argv[2]), 'upgrade', keep=3):\n"
            "    logging.getLogger('ivle_maint.test').info('the run goes on')")
    point = 0
    while True:
        point += 1
        logs = tmp_path / str(point)
        logs.mkdir()
        for name, data in contents.items():
            (logs / name).write_bytes(data)
        outcome = failed_at(point, code, "import logging\nfrom pathlib import Path\n"
                            "from ivle_maint.logfile import run_log", body, str(logs))
        assert outcome in ("finished", "reached"), (point, outcome)
        for name, data in contents.items():
            plain, packed = logs / name, logs / (name + ".gz")
            assert not plain.exists() or plain.read_bytes() == data, (point, name)
            assert not packed.exists() or gzip.decompress(packed.read_bytes()) == data, \
                (point, name)
        shutil.rmtree(logs)
        if outcome == "finished":
            break
    assert point > 20

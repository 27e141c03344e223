"""The warm postinst's checks that need no worker: which command is handed
over, and a loaded file changed since the worker loaded it (generated
changes to generated files)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint import warm, warm_worker

CHANGES = ("none", "rewritten in place", "replaced", "removed", "touched", "grown")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(CHANGES), min_size=1, max_size=6))
def test_every_change_to_a_loaded_file_is_seen(changes):
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"m{i}.py" for i in range(len(changes))]
        for path in files:
            path.write_text("x = 1\n")
            os.utime(path, ns=(10**18, 10**18))
        before = {p: s for p, s in warm_worker.snapshot().items()}  # the interpreter's own
        before.update({str(p): _seen(p) for p in files})
        for path, change in zip(files, changes, strict=True):
            if change == "rewritten in place":
                with open(path, "r+") as handle:
                    handle.write("y")
            elif change == "replaced":  # as dpkg installs a file: a new inode
                new = path.with_suffix(".new")
                new.write_text("x = 1\n")
                os.utime(new, ns=(10**18, 10**18))
                new.replace(path)
            elif change == "removed":
                path.unlink()
            elif change == "touched":
                os.utime(path)
            elif change == "grown":
                with open(path, "a") as handle:
                    handle.write("\n")
                os.utime(path, ns=(10**18, 10**18))
        expected = sorted(str(p) for p, c in zip(files, changes, strict=True) if c != "none")
        assert warm_worker.changed(before) == expected


def _seen(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def test_only_dpkgs_postinst_hook_is_handed_over(monkeypatch):
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "postinst")
    assert warm.wanted(["hook", "postinst", "configure", "1.0"]) == (os.geteuid() == 0)
    assert not warm.wanted(["hook", "preinst", "upgrade", "1.0", "1.1"])
    assert not warm.wanted(["db", "status"])
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
    assert not warm.wanted(["hook", "postinst", "configure", "1.0"])


def test_without_a_directory_nothing_is_handed_over(tmp_path):
    assert warm.hand_over(["hook", "postinst", "configure", "1.0"], tmp_path / "none") is None


def test_no_worker_starts_without_systemd_or_root(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(warm.os.path, "isdir", lambda path: False)  # no /run/systemd/system
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: started.append(a))
    assert warm.start_worker(tmp_path / "run") is False
    assert started == [] and not (tmp_path / "run").exists()


def test_the_worker_starts_through_the_environments_gate(tmp_path, monkeypatch):
    """What the preinst inherited does not reach the worker: PYTHON*, LD_*
    and PG* are dropped, its PYTHONPATH is this ivle_maint's directory alone."""
    started = []
    monkeypatch.setattr(warm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(warm.os.path, "isdir", lambda path: True)  # systemd booted
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: started.append((a, k)))
    for name in ("PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "PGHOST"):
        monkeypatch.setenv(name, "/tmp/elsewhere")
    directory = tmp_path / "run"
    assert warm.start_worker(directory) is True
    (argv,), kwargs = started[0]
    env = kwargs["env"]
    assert argv[1:] == ["-m", "ivle_maint.warm_worker", str(directory)]
    assert env["PYTHONPATH"] == str(Path(warm.__file__).resolve().parents[1])
    assert not {"PYTHONSTARTUP", "LD_PRELOAD", "PGHOST"} & set(env)
    assert kwargs["start_new_session"] and kwargs["close_fds"]
    assert (kwargs["stdout"], kwargs["stderr"]) == (-3, -3)  # DEVNULL: apt waits on no pipe
    assert oct(directory.stat().st_mode & 0o777) == "0o700"


def test_a_worker_that_cannot_start_never_fails_the_preinst(tmp_path, monkeypatch):
    monkeypatch.setattr(warm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(warm.os.path, "isdir", lambda path: True)

    def refuse(*_args, **_kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr("subprocess.Popen", refuse)
    assert warm.start_worker(tmp_path / "run") is False
    assert warm.start_worker(tmp_path / "no" / "such" / "parent") is False  # mkdir fails

"""A restore point's commit killed (SIGKILL) at every point of its work:
after each kept file deleted, half-way through the template copy's
removal, after the dump's pin is released, after each manifest write.
Whatever the point, the point left is either pinned and whole (every
kept file there as kept, its template copy whole) or taken by no
rollback; the next commit finishes it.  Before, a commit killed half-way
left a pinned point with its files deleted and its template copy half
removed, which a rollback then renamed in as the live jail template."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ivle_maint.config import Settings, load_settings
from ivle_maint.errors import MaintError
from ivle_maint.gates import trusted
from ivle_maint.rollback import point as points

# ivle-maint's own commit, killed at every point, no library's behaviour: Debian's suite only.
pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[3]
TEMPLATE_FILES = 40

# commit() in its own process, SIGKILLed at the Nth call of the named kind.
KILLED_COMMIT = textwrap.dedent("""\
    import os, shutil, signal, sys
    from pathlib import Path
    from ivle_maint.config import load_settings
    from ivle_maint.rollback import point as points
    kind, nth, seen = sys.argv[2], int(sys.argv[3]), {"n": 0}

    def die_at(this):
        if this == kind:
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    real_write, real_remove, real_release = (points.write_state_file, points.remove_tree,
                                             points.pins.release)
    real_unlink = Path.unlink
    def write(*a, **k):
        real_write(*a, **k); die_at("write")
    def unlink(self, *a, **k):
        real_unlink(self, *a, **k); die_at("unlink")
    def remove(path):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        for f in files[: len(files) // 2]:  # rm killed half-way through
            f.unlink()
        die_at("remove")
        real_remove(path)
    def release(*a, **k):
        out = real_release(*a, **k); die_at("release"); return out
    points.write_state_file, points.remove_tree, points.pins.release = write, remove, release
    Path.unlink = unlink
    settings = load_settings(sys.argv[1])
    points.commit(settings, points.for_upgrade(settings, "1.0->1.1@ab"))
    """)


def a_node(top: Path) -> tuple[Settings, points.RestorePoint, Path]:
    top.mkdir(parents=True, exist_ok=True)
    conf = top / "maint.conf"
    conf.write_text(f"[node]\nrole = master\n[paths]\nstate = {top / 'state'}\n"
                    f"backup = {top / 'backup'}\n")
    settings = load_settings(str(conf))
    ivle_conf = top / "ivle.conf"
    ivle_conf.write_text("[media]\nversion = 1\n")
    dump = top / "backup" / "ivle.dump"
    dump.parent.mkdir(exist_ok=True)
    dump.write_bytes(b"dump")
    point = points.open_point(settings, "1.0->1.1@ab", "1.0", "1.1")
    point.keep_file("ivle.conf", ivle_conf, trusted.IVLE_CONF)
    point.keep_file("ivle-maint.conf", conf, trusted.SETTINGS)
    point.record_dump(dump)
    template = top / "jails" / "__base__"
    aside = template.with_name(f"__base__.restore-{points.slug(point.upgrade)}")
    for number in range(TEMPLATE_FILES):
        (aside / "usr" / f"d{number % 4}").mkdir(parents=True, exist_ok=True)
        (aside / "usr" / f"d{number % 4}" / f"f{number}").write_text(str(number))
    template.mkdir()
    point.update(lambda p: setattr(p, "template", {
        "path": str(template), "aside": str(aside), "inode": str(os.lstat(aside).st_ino)}))
    return settings, point, aside


def whole(point: points.RestorePoint, aside: Path) -> bool:
    try:
        for name in point.files:
            point.kept_file(name)
        point.check_dump()
    except (MaintError, OSError):
        return False
    return sum(1 for p in aside.rglob("*") if p.is_file()) == TEMPLATE_FILES


@hsettings(max_examples=30, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["write", "unlink", "remove", "release"]), nth=st.integers(1, 3))
def test_a_commit_killed_anywhere_leaves_a_whole_pinned_point_or_none_and_finishes_later(
        tmp_path_factory, kind: str, nth: int) -> None:
    settings, _point, aside = a_node(tmp_path_factory.mktemp("node"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_COMMIT, str(settings.path), kind,
                           str(nth)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    left = points.for_upgrade(settings, "1.0->1.1@ab")
    assert left is not None
    usable = points.for_rollback(settings, "1.1", "1.0")
    assert usable is None or whole(usable, aside), (kind, nth, left)
    # The next commit (or completed upgrade) finishes what was let go.
    points.finish_commits(settings)
    again = points.for_upgrade(settings, "1.0->1.1@ab")
    assert again is not None
    if not again.pinned:
        assert again.committed and not aside.exists()
        assert sorted(p.name for p in again.directory.iterdir()) == [".lock", "point.json"]

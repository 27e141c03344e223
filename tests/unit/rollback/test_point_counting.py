"""A restore point is let go after [rollback] commit_after_upgrades later
releases completed on the node, counted once each: the same upgrade's
completion recorded again (dpkg --configure -a or `ivle-maint upgrade` run
again once it is complete, a rerun after a run killed anywhere in
_record_completion, the update itself killed) never counts twice.  Before,
each recording counted: with commit_after_upgrades = 2 the point was
committed (its package, files and template deleted) after one later
upgrade and one rerun, before anyone could use it."""

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
from ivle_maint.rollback import point as points

# ivle-maint's own counting of restore points, no library's behaviour: Debian's suite only.
pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[3]


def settings_in(top: Path, limit: int) -> Settings:
    top.mkdir(parents=True, exist_ok=True)
    path = top / "maint.conf"
    path.write_text(f"[node]\nrole = master\n[paths]\nstate = {top / 'state'}\n"
                    f"backup = {top / 'backup'}\n[rollback]\n"
                    f"commit_after_upgrades = {limit}\ncommit_after_days = 0\n")
    return load_settings(str(path))


def first_point(settings: Settings) -> points.RestorePoint:
    found = points.for_upgrade(settings, "1.0->1.1@a")
    assert found is not None
    return found


@hsettings(max_examples=60, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 4), repeats=st.lists(st.integers(1, 4), min_size=1, max_size=5))
def test_each_later_release_counts_once_however_often_its_completion_is_recorded(
        tmp_path_factory, limit: int, repeats: list[int]) -> None:
    settings = settings_in(tmp_path_factory.mktemp("node"), limit)
    points.open_point(settings, "1.0->1.1@a", "1.0", "1.1")
    points.completed(settings, "1.0->1.1@a", "1.1")
    for number, times in enumerate(repeats, 2):
        upgrade, new = f"1.{number - 1}->1.{number}@u{number}", f"1.{number}"
        points.open_point(settings, upgrade, f"1.{number - 1}", new)
        for _ in range(times):  # recorded again: reruns of a completed upgrade
            points.completed(settings, upgrade, new)
        later = number - 1
        assert first_point(settings).committed == (later >= limit), (limit, repeats)


KILLED_IN_UPDATE = textwrap.dedent("""\
    import os, signal, sys
    from ivle_maint.config import load_settings
    from ivle_maint.rollback import point as points
    nth, calls = int(sys.argv[2]), [0]
    real = points.write_state_file
    def dying(*args, **kwargs):
        real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    points.write_state_file = dying
    settings = load_settings(sys.argv[1])
    points.completed(settings, "1.1->1.2@b", "1.2")
    """)


@hsettings(max_examples=12, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nth=st.integers(1, 4))
def test_a_completion_killed_after_any_manifest_write_counts_once_when_run_again(
        tmp_path_factory, nth: int) -> None:
    settings = settings_in(tmp_path_factory.mktemp("node"), 2)
    points.open_point(settings, "1.0->1.1@a", "1.0", "1.1")
    points.completed(settings, "1.0->1.1@a", "1.1")
    points.open_point(settings, "1.1->1.2@b", "1.1", "1.2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_UPDATE, str(settings.path),
                             str(nth)], env=env, capture_output=True, text=True, check=False)
    assert killed.returncode in (0, -signal.SIGKILL), killed.stderr
    points.completed(settings, "1.1->1.2@b", "1.2")  # the rerun
    assert not first_point(settings).committed  # one later release of the two

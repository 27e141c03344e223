"""The rollback's check of the slaves waits as the cluster's waits do
(cluster/waits.py's poll): a progress line when what it waits for
changes, each look on a session closed after it, a one-line failure at
[cluster] slaves_timeout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ivle_maint.cluster.table import NodeRow
from ivle_maint.config import Settings, load_settings
from ivle_maint.errors import MaintError
from ivle_maint.output import RecordingReporter
from ivle_maint.rollback import checks
from ivle_maint.rollback.point import RestorePoint


def slave(serving: str | None) -> NodeRow:
    return NodeRow("s1", "slave", "host", "id", serving, serving, None, "idle", None, None,
                   None)


class Sessions:
    """checks.session: counts the sessions opened and closed."""

    opened = closed = 0

    @classmethod
    @contextmanager
    def session(cls, settings: Settings, reporter: Any, resume: Any) -> Iterator[Any]:
        cls.opened += 1
        try:
            yield SimpleNamespace(conn=None)
        finally:
            cls.closed += 1


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[list[NodeRow]]], None]:
    Sessions.opened = Sessions.closed = 0
    monkeypatch.setattr(checks, "session", Sessions.session)

    def rounds(seen: list[list[NodeRow]]) -> None:
        answers = iter(seen)
        last: list[list[NodeRow]] = [[]]

        def nodes(conn: Any) -> list[NodeRow]:
            last[0] = next(answers, last[0])
            return last[0]

        monkeypatch.setattr(checks.table, "nodes", nodes)

    return rounds


def settings_in(tmp_path: Path, timeout: float) -> Settings:
    path = tmp_path / "maint.conf"
    path.write_text(f"[node]\nrole = master\n[paths]\nstate = {tmp_path / 'state'}\n"
                    f"[cluster]\npoll = 0.05\nslaves_timeout = {timeout}\n")
    return load_settings(str(path))


POINT = RestorePoint(Path("/nonexistent"), "1.0->1.1@ab", "1.0", "1.1", "master")


def test_the_slaves_check_waits_with_a_progress_line_then_passes(tmp_path, looks):
    looks([[slave("1.1")], [slave("1.1")], [slave("1.0")]])
    reporter = RecordingReporter()
    assert checks._slaves(settings_in(tmp_path, 30), reporter, POINT) == "1 slave(s) serve 1.0"
    waiting = [line for line in reporter.lines if line.startswith("waiting for")]
    assert len(waiting) == 1  # printed when what is awaited changes, not at every look
    assert waiting[0].startswith("waiting for the slaves to serve 1.0: s1 serves 1.1 (")
    assert Sessions.opened == Sessions.closed >= 1


def test_the_slaves_check_fails_in_one_line_at_its_timeout(tmp_path, looks):
    looks([[slave(None)]])
    with pytest.raises(MaintError) as failed:
        checks._slaves(settings_in(tmp_path, 0.2), RecordingReporter(), POINT)
    assert str(failed.value) == "s1 serves nothing"
    assert Sessions.opened == Sessions.closed >= 1

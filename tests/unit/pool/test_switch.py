"""drain and ready without a balancer to ask: the answer alone, the role
and the schema hold decide."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivle_maint.config import Settings, load_settings
from ivle_maint.errors import MaintError, UsageError
from ivle_maint.journal import IN_PROGRESS, Journal
from ivle_maint.pool import answer, switch


def settings_with(tmp_path: Path, role: str = "slave") -> Settings:
    path = tmp_path / "ivle-maint.conf"
    path.write_text(f"[node]\nrole = {role}\n[paths]\nstate = {tmp_path / 'state'}\n"
                    f"[web]\napache_dir = {tmp_path / 'apache'}\n")
    return load_settings(str(path))


def test_drain_and_ready_change_the_answer_and_ask_no_balancer(tmp_path):
    settings = settings_with(tmp_path)
    ready = switch.ready(settings, "1.1")
    assert (ready.answer, ready.seen) == (answer.Answer("1.1"), None)
    assert answer.read(settings) == answer.Answer("1.1")
    drained = switch.drain(settings)
    assert (drained.answer.ready, drained.seen) == (False, None)
    assert answer.read(settings) == answer.Answer(None)
    assert answer.conf_path(settings).exists()


@pytest.mark.parametrize("action", [switch.drain, lambda s: switch.ready(s, "1.1")])
def test_a_master_only_node_is_refused_with_nothing_written(tmp_path, action):
    settings = settings_with(tmp_path, role="master")
    with pytest.raises(UsageError, match="role is master") as caught:
        action(settings)
    assert caught.value.exit_status == 2
    assert not (tmp_path / "state").exists() and not (tmp_path / "apache").exists()


def test_ready_is_refused_while_an_upgrade_of_this_node_is_unfinished(tmp_path):
    settings = settings_with(tmp_path)
    journal_dir = tmp_path / "state" / "journal"
    journal_dir.mkdir(parents=True)
    Journal(journal_dir / "1.0_to_1.1.json", "1.0", "1.1", "slave",
            state=IN_PROGRESS).save()
    with pytest.raises(MaintError, match="pool ready: refused") as caught:
        switch.ready(settings, "1.1")
    assert "\n" not in str(caught.value)
    assert answer.read(settings) == answer.Answer(None)
    switch.drain(settings)  # draining is always allowed

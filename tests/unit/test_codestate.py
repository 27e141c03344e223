"""Whether an unfinished upgrade's new code is in place (real dpkg-query)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivle_maint.codestate import new_code_state
from ivle_maint.journal import Journal, StepRecord


def dpkg_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str, version: str) -> None:
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "updates").mkdir()
    (admin / "status").write_text(
        f"Package: ivle\nStatus: {status}\nPriority: optional\nSection: web\n"
        f"Maintainer: IVLE <ivle@example.org>\nArchitecture: all\nVersion: {version}\n"
        "Description: IVLE\n\n"
    )
    monkeypatch.setenv("DPKG_ADMINDIR", str(admin))


def dpkg_journal(tmp_path: Path, *, code_new: bool = False) -> Journal:
    return Journal(tmp_path / "j.json", "1.0", "1.1", "both", package="ivle", code_new=code_new)


def test_dpkg_unpacked_new_version_is_in_place_and_configure_is_owed(tmp_path, monkeypatch):
    dpkg_db(tmp_path, monkeypatch, "install ok half-configured", "1.1")
    state = new_code_state(dpkg_journal(tmp_path))
    assert state.in_place and state.dpkg_owed
    assert state.evidence == "dpkg has ivle 1.1 half-configured"


def test_dpkg_record_of_the_old_version_wins_over_the_journal(tmp_path, monkeypatch):
    dpkg_db(tmp_path, monkeypatch, "install reinstreq half-installed", "1.0")
    state = new_code_state(dpkg_journal(tmp_path, code_new=True))
    assert not state.in_place and state.install == "apt-get install ivle=1.1"


def test_no_dpkg_record_and_only_the_preinst_ran(tmp_path, monkeypatch):
    dpkg_db(tmp_path, monkeypatch, "unknown ok not-installed", "")
    state = new_code_state(dpkg_journal(tmp_path))
    assert not state.in_place
    assert state.install == ("install 1.1's code, then: ivle-maint hook --package-version 1.1 "
                             "postinst configure 1.0")
    assert new_code_state(dpkg_journal(tmp_path, code_new=True)).in_place


def test_source_install_counts_only_a_completed_setup_py(tmp_path):
    resume = "ivle-maint upgrade --from 1.0 --to 1.1 --source /src/ivle"
    journal = Journal(tmp_path / "j.json", "1.0", "1.1", "both", source="/src/ivle",
                      resume=resume)
    journal.steps["migrate"] = StepRecord("failed", 0.0)  # never trusted for a source tree
    state = new_code_state(journal)
    assert not state.in_place and state.install == resume
    journal.code_new = True
    assert new_code_state(journal).in_place


def test_a_journal_without_a_record_trusts_an_after_phase_step(tmp_path):
    journal = Journal(tmp_path / "j.json", "1.0", "1.1", "both")
    assert not new_code_state(journal).in_place
    journal.steps["migrate"] = StepRecord("failed", 0.0)
    assert new_code_state(journal).in_place

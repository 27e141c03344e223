"""The slave's pool answer file and the Apache configuration serving it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.pool import answer

WHERE = Path("/var/lib/ivle-maint/pool/answer")


def test_ready_round_trips():
    assert answer.parse(answer.answer_text("1:1.1-2"), WHERE) == answer.Answer("1:1.1-2")
    assert str(answer.Answer("1.1")) == "ready 1.1" and str(answer.Answer(None)) == "drain"


@given(st.binary(max_size=80))
def test_any_file_is_an_answer_or_one_line_naming_it(data):
    try:
        found = answer.parse(data, WHERE)
    except MaintError as exc:
        assert str(WHERE) in str(exc) and "\n" not in str(exc)
    else:
        assert found.ready and data == answer.answer_text(found.version or "")


@pytest.mark.parametrize("version", ["", "1.1 x", "1.1\n", "../1"])
def test_no_answer_is_written_for_what_is_no_version(version):
    with pytest.raises(MaintError):
        answer.answer_text(version)


def settings_with(tmp_path: Path, state: Path) -> object:
    path = tmp_path / "ivle-maint.conf"
    path.write_text(f"[node]\nrole = slave\n[paths]\nstate = {state}\n"
                    f"[web]\napache_dir = {tmp_path / 'apache'}\n")
    return load_settings(str(path))


def test_written_read_and_removed(tmp_path):
    settings = settings_with(tmp_path, tmp_path / "state")
    assert answer.read(settings) == answer.Answer(None)  # type: ignore[arg-type]
    path = answer.write_ready(settings, "1.1")  # type: ignore[arg-type]
    assert path.read_bytes() == b"ready 1.1\n" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert answer.read(settings) == answer.Answer("1.1")  # type: ignore[arg-type]
    assert answer.remove(settings) and not answer.remove(settings)  # type: ignore[arg-type]
    assert answer.read(settings) == answer.Answer(None)  # type: ignore[arg-type]


def test_a_symlink_in_the_answers_place_is_refused(tmp_path):
    settings = settings_with(tmp_path, tmp_path / "state")
    answer.write_ready(settings, "1.1")  # type: ignore[arg-type]
    path = answer.answer_path(settings)  # type: ignore[arg-type]
    path.unlink()
    path.symlink_to("/etc/hostname")
    with pytest.raises(MaintError):
        answer.read(settings)  # type: ignore[arg-type]


def test_the_apache_conf_aliases_the_url_to_the_file(tmp_path):
    settings = settings_with(tmp_path, tmp_path / "state")
    conf = answer.write_conf(settings)  # type: ignore[arg-type]
    text = conf.read_text()
    assert conf == tmp_path / "apache" / "conf-available" / "ivle-maint-pool.conf"
    assert f'Alias /.ivle-maint/pool "{tmp_path}/state/pool/answer"' in text
    assert f'<Directory "{tmp_path}/state/pool">' in text


def test_a_state_path_apache_cannot_quote_is_refused(tmp_path):
    settings = settings_with(tmp_path, tmp_path / 'st"ate')
    with pytest.raises(MaintError, match="cannot quote"):
        answer.conf_text(settings)  # type: ignore[arg-type]

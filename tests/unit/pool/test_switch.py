"""drain and ready without a balancer to ask: the answer alone, the role,
the schema hold and the readiness check (a real web server on loopback
standing in for IVLE behind the slave's Apache) decide."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ivle_maint.config import Settings, load_settings
from ivle_maint.errors import ConfigError, MaintError, UsageError
from ivle_maint.journal import IN_PROGRESS, Journal
from ivle_maint.pool import answer, readiness, switch
from support.pages import MAINTENANCE, Page, ivle_page, serving

REPO = Path(__file__).resolve().parents[3]


def settings_with(tmp_path: Path, role: str = "slave", url: str = "http://127.0.0.1/",
                  media: str | None = "1.1", timeout: float = 10) -> Settings:
    """A slave's settings, its ivle.conf's [media] version MEDIA (None: unset)."""
    etc = tmp_path / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "ivle.conf").write_text("# the site's own comment\n[media]\n"
                                   + (f"version = {media}\n" if media else ""))
    path = tmp_path / "ivle-maint.conf"
    path.write_text(f"[node]\nrole = {role}\n[paths]\nstate = {tmp_path / 'state'}\n"
                    f"ivle_conf_dir = {etc}\n[web]\napache_dir = {tmp_path / 'apache'}\n"
                    f'[pool]\nready_url = "{url}"\nready_timeout = {timeout}\n')
    return load_settings(str(path))


def test_drain_and_ready_change_the_answer_and_ask_no_balancer(tmp_path):
    with serving(MAINTENANCE, Page(200, ivle_page("1.1"))) as site:
        settings = settings_with(tmp_path, url=site.url("/ivle/"))
        ready = switch.ready(settings, "1.1")
    assert (ready.answer, ready.seen) == (answer.Answer("1.1"), None)
    assert ready.ready is not None and ready.ready.url == site.url("/ivle/")
    assert [path for path, _ in site.asked] == ["/ivle/", "/ivle/"]  # until IVLE answered
    assert answer.read(settings) == answer.Answer("1.1")
    drained = switch.drain(settings)
    assert (drained.answer.ready, drained.seen, drained.ready) == (False, None, None)
    assert answer.read(settings) == answer.Answer(None)
    assert answer.conf_path(settings).exists()


@pytest.mark.parametrize("before", [None, "1.0"], ids=["drained", "ready-1.0"])
@pytest.mark.parametrize(("page", "seen"), [
    (Page(200, ivle_page("1.0")), "the page does not carry media version 1.1"),
    (MAINTENANCE, "HTTP 503, ivle-maint's maintenance page"),
    (Page(500, b"mod_python: ImportError"), "HTTP 500"),
], ids=["old-media-version", "maintenance", "500"])
def test_a_slave_whose_page_fails_stays_out_with_its_answer_unchanged(
        tmp_path, before, page, seen):
    with serving(page) as site:
        settings = settings_with(tmp_path, url=site.url(), timeout=1)
        if before is not None:
            answer.write_ready(settings, before)
        with pytest.raises(MaintError) as caught:
            switch.ready(settings, "1.1")
    text = str(caught.value)
    assert text.startswith(f"pool ready: IVLE at {site.url()} is not ready after ")
    assert seen in text and text.endswith("this slave stays out of the pool (its answer "
                                          "unchanged)")
    assert "\n" not in text and caught.value.exit_status == 1
    assert answer.read(settings) == answer.Answer(before)
    assert site.asked  # IVLE was asked, and said no


def test_the_media_version_is_ivle_confs(tmp_path):
    """Unset in ivle.conf: IVLE links its files under no version, any page of
    its passes; set, the page must carry that one (not the package's)."""
    with serving(Page(200, ivle_page("1.1"))) as site:
        unset = settings_with(tmp_path / "unset", url=site.url(), media=None)
        assert switch.ready(unset, "1.2").ready is not None
        other = settings_with(tmp_path / "other", url=site.url(), media="1.1.r2", timeout=1)
        with pytest.raises(MaintError, match=r"does not carry media version 1\.1\.r2 "):
            switch.ready(other, "1.1")
        assert answer.read(other) == answer.Answer(None)


def test_a_ready_url_the_gate_refuses_is_one_line_and_changes_nothing(tmp_path):
    settings = settings_with(tmp_path, url="http://127.0.0.1:99999/")
    with pytest.raises(ConfigError, match=r"^\[pool\] ready_url ") as caught:
        switch.ready(settings, "1.1")
    assert caught.value.exit_status == 2
    assert not (tmp_path / "state").exists() and not (tmp_path / "apache").exists()
    assert readiness.ready_url(settings_with(tmp_path / "ok"))[0] == "http://127.0.0.1/"


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


def test_pool_ready_prints_how_long_ivle_took_to_answer(tmp_path):
    """The command as a person runs it (--version given: this node has no
    recorded version); the line says how long IVLE took."""
    with serving(MAINTENANCE, Page(200, ivle_page("1.1"))) as site:
        settings_with(tmp_path, url=site.url())
        conf = tmp_path / "ivle-maint.conf"
        conf.write_text(conf.read_text().replace(
            "[web]", f"run = {tmp_path / 'run'}\nlog = {tmp_path / 'log'}\n[web]"))
        done = subprocess.run([sys.executable, "-m", "ivle_maint", "--config", str(conf),
                               "pool", "ready", "--version", "1.2"], capture_output=True,
                              text=True, timeout=60, check=False, cwd=REPO,
                              env={k: v for k, v in os.environ.items()
                                   if k not in ("IVLE_MAINT_CONF", "IVLECONF")})
    assert done.returncode == 0, done.stderr
    assert re.search(rf"IVLE answered at {re.escape(site.url())} \(HTTP 200\) after "
                     r"[0-9]+\.[0-9]s", done.stderr), done.stderr
    assert (tmp_path / "state" / "pool" / "answer").read_text() == "ready 1.2\n"

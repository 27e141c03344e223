"""ivle-buildjail -u on a sandbox node: new code in the template, failures, streaming."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
from pathlib import Path

import pytest

from ivle_maint import logfile, system
from ivle_maint.cli import main
from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.jails import template
from ivle_maint.jails.template import check_template, rebuild_template
from ivle_maint.output import RecordingReporter
from ivle_sandbox.node import install_version

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]


@pytest.fixture
def master(node_factory):
    """A master with the jail tree, nothing mounted or running (fast to build)."""
    return node_factory(users=2, role="master", mount=False, services=False)


def settings_of(node, **commands):
    settings = load_settings(str(node.maint_conf))
    settings.conf["commands"].update(commands)
    return settings


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_rebuild_copies_the_new_version_into_the_template(master):
    install_version(master, "1.1")
    assert master.template_version() == "1.0"
    reporter = RecordingReporter()
    result = rebuild_template(settings_of(master), reporter)
    assert master.template_version() == "1.1"
    assert (master.template / "usr/lib/ivle/ivle/__init__.py").read_text().count("1.1") == 2
    assert result.run.exit_code == 0 and result.run.lines >= 60
    assert result.compared is not None and result.compared > 5
    assert result.template == master.template
    assert json.loads(json.dumps(result.metrics))["output_lines"] == result.run.lines
    # The progress line is closed at the end (done == total).
    assert reporter.progress_calls[-1][1:] == (result.run.lines, result.run.lines)


def test_rebuild_twice_is_harmless(master):
    install_version(master, "1.1")
    settings = settings_of(master)
    first = rebuild_template(settings, RecordingReporter())
    second = rebuild_template(settings, RecordingReporter())
    assert first.compared == second.compared
    assert master.template_version() == "1.1"


def test_failure_is_one_line_with_the_output_tail_and_template_untouched(master):
    install_version(master, "1.1")
    master.set_fakes("ivle-buildjail", fail=True, exit_code=100)
    with pytest.raises(MaintError) as caught:
        rebuild_template(settings_of(master), RecordingReporter())
    message = str(caught.value)
    assert "\n" not in message
    assert "ivle-buildjail -u failed with status 100" in message
    assert "E: Sub-process /usr/bin/dpkg returned an error code (1)" in message
    assert master.template_version() == "1.0"


def test_output_is_streamed_not_held(master, caplog):
    master.set_fakes("ivle-buildjail", lines=3000)
    with caplog.at_level(logging.INFO, logger="ivle_maint.jails.template"):
        result = rebuild_template(settings_of(master), RecordingReporter())
    streamed = [r for r in caplog.records if r.getMessage().startswith("ivle-buildjail: ")]
    # The first lines went to the log as they came, then only a bounded
    # tail was kept, logged after a line counting what was left out.
    assert result.run.lines > 3000
    assert len(streamed) == 2 * logfile.DEFAULT_OUTPUT_LINES + 1
    assert "left out" in streamed[logfile.DEFAULT_OUTPUT_LINES].getMessage()
    assert len(result.run.tail) == system.TAIL_LINES
    assert result.run.tail[-1] == streamed[-1].getMessage().removeprefix("ivle-buildjail: ")


def test_memory_stays_flat_for_a_huge_output(master, tmp_path):
    # 40 MB of output: holding it would show up as tens of MB at the peak.
    loud = script(tmp_path / "loud",
                  'yes "Get:1 http://mirror bookworm/main amd64 python3 1.0 [12 kB]" '
                  '| head -n 600000\n')
    tracemalloc.start()
    try:
        result = rebuild_template(settings_of(master, buildjail=loud), RecordingReporter())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.run.lines == 600000
    assert peak < 4_000_000, f"peak {peak} bytes"


def test_heartbeat_reports_while_the_tool_runs(master):
    master.set_fakes("ivle-buildjail", delay=1.2)
    reporter = RecordingReporter()
    result = rebuild_template(settings_of(master), reporter, interval=0.1)
    beats = reporter.progress_calls[:-1]
    assert len(beats) >= 5  # about 12 during the 1.2s delay
    assert all(total is None for _, _, total in beats)
    assert beats[0][0].startswith("ivle-buildjail -u (")
    assert [done for _, done, _ in beats] == sorted(done for _, done, _ in beats)
    assert result.run.seconds >= 1.2


def test_refuses_unless_root_before_running_anything(master, monkeypatch, tmp_path):
    marker = tmp_path / "ran"
    tool = script(tmp_path / "tool", f"touch {marker}\n")
    monkeypatch.setattr(template.os, "geteuid", lambda: 1000)
    with pytest.raises(MaintError, match=r"must run as root \(uid 0\), not uid 1000"):
        rebuild_template(settings_of(master, buildjail=tool), RecordingReporter())
    assert not marker.exists()


def test_exit_zero_without_a_sync_is_caught(master, tmp_path):
    # A tool that "succeeds" but only changed template_build.
    lazy = script(tmp_path / "lazy", f'echo "patched" >> {master.template_build}/etc/hostname\n')
    with pytest.raises(MaintError, match=r"does not match .*etc/hostname differs"):
        rebuild_template(settings_of(master, buildjail=lazy), RecordingReporter())


def test_missing_template_is_caught(master, tmp_path):
    wipe = script(tmp_path / "wipe", f"rm -rf {master.template}\n")
    with pytest.raises(MaintError, match=r"template .*__base__ does not exist"):
        rebuild_template(settings_of(master, buildjail=wipe), RecordingReporter())


def test_check_template_sees_extra_and_missing_entries(tmp_path):
    build, template = tmp_path / "build", tmp_path / "template"
    for tree in (build, template):
        (tree / "usr/lib").mkdir(parents=True)
        (tree / "usr/lib/x").write_text("same")
        os.utime(tree / "usr/lib/x", (1, 1))
    assert check_template(template, build) == 3
    (template / "stale").write_text("left by an old build")
    (build / "usr/lib/new").symlink_to("x")
    with pytest.raises(MaintError) as caught:
        check_template(template, build)
    assert "usr/lib/new missing from the template" in str(caught.value)
    assert "stale only in the template" in str(caught.value)


def test_cli_jails_rebuild(node_factory, capsys):
    node = node_factory(users=1, role="master", mount=False, services=False, env=True)
    install_version(node, "1.2")
    assert main(["jails", "rebuild"]) == 0
    err = capsys.readouterr().err
    assert "ivle-buildjail -u: " in err and "template matches template_build" in err
    assert node.template_version() == "1.2"
    logs = list(node.maint_log_dir.glob("jails-rebuild-*.log"))
    assert len(logs) == 1 and "I: Syncing" in logs[0].read_text()
    node.set_fakes("ivle-buildjail", fail=True)
    assert main(["jails", "rebuild"]) == 1
    err = capsys.readouterr().err
    assert err.count("ivle-maint: error:") == 1 and "status 100" in err

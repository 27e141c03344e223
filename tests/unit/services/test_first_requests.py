"""The warning about mod_python's first-request race: given exactly when an
enabled IVLE site hands requests to mod_python under a threaded MPM and no
PythonImport is in effect, over generated Apache layouts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.config import Settings, load_settings
from ivle_maint.output import RecordingReporter
from ivle_maint.services import first_requests
from ivle_maint.steps import stop_web

MPMS = ("mpm_event", "mpm_worker", "mpm_prefork")
# How a directive may be written: Apache's names are case-insensitive and a
# line may be indented; "#" makes it a comment.
SPELLINGS = st.sampled_from(["{d}", "  {d}", "\t{D}", "{l}", "#{d}", "# {d}", "  #{d}"])


def line(directive: str, args: str, spelling: str) -> tuple[str, bool]:
    text = spelling.format(d=directive, D=directive.upper(), l=directive.lower())
    return f"{text} {args}", not text.lstrip().startswith("#")


# Where a server-wide directive may be written besides the site.
ELSEWHERE = ("conf-enabled/other.conf", "apache2.conf", "mods-enabled/python.conf")


def layout(root: Path, mpm: str, mod_python: bool, site_lines: list[str], *,
           conf_lines: list[str], site_enabled: bool,
           conf_file: str = ELSEWHERE[0]) -> Settings:
    apache = root / "apache2"
    for sub in ("mods-enabled", "sites-available", "sites-enabled", "conf-enabled"):
        (apache / sub).mkdir(parents=True)
    (apache / "mods-enabled" / f"{mpm}.load").write_text("LoadModule x y\n")
    if mod_python:
        (apache / "mods-enabled" / "python.load").write_text("LoadModule python_module x\n")
    site = apache / "sites-available" / "ivle.conf"
    site.write_text("<VirtualHost *:80>\n" + "\n".join(site_lines) + "\n</VirtualHost>\n")
    if site_enabled:
        (apache / "sites-enabled" / "ivle.conf").symlink_to(site)
    (apache / conf_file).write_text("\n".join(conf_lines) + "\n")
    conf = root / "maint.conf"
    conf.write_text(f"[node]\nrole = slave\n[paths]\nstate = {root / 'state'}\n"
                    f"[web]\napache_dir = {apache}\n")
    return load_settings(str(conf))


@settings(max_examples=80, deadline=None)
@given(mpm=st.sampled_from(MPMS), mod_python=st.booleans(), site_enabled=st.booleans(),
       handler=SPELLINGS, site_import=st.one_of(st.none(), SPELLINGS),
       conf_import=st.one_of(st.none(), SPELLINGS), conf_file=st.sampled_from(ELSEWHERE))
def test_warned_exactly_when_a_first_request_can_race(mpm, mod_python, site_enabled, *, handler,
                                                      site_import, conf_import, conf_file):
    handler_line, handled = line("PythonHandler", "ivle.dispatch", handler)
    site_lines, conf_lines, imported = ["SetHandler mod_python", handler_line], [], False
    if site_import is not None:
        text, active = line("PythonImport", "ivle.dispatch ivle", site_import)
        site_lines.append(text)
        imported |= active
    if conf_import is not None:
        text, active = line("PythonImport", "ivle.dispatch ivle", conf_import)
        conf_lines.append(text)
        imported |= active
    with tempfile.TemporaryDirectory() as tmp:
        conf = layout(Path(tmp), mpm, mod_python, site_lines, conf_lines=conf_lines,
                      site_enabled=site_enabled, conf_file=conf_file)
        expected = (mpm != "mpm_prefork" and mod_python and site_enabled and handled
                    and not imported)
        assert first_requests.at_risk(conf) == (["ivle"] if expected else [])
        warning = first_requests.warning(conf)
        assert bool(warning) == expected
        assert "\n" not in warning  # one line


def test_the_preflight_warns_and_the_plan_says_so(tmp_path):
    conf = layout(tmp_path, "mpm_event", True, ["PythonHandler ivle.dispatch"], conf_lines=[],
                  site_enabled=True)

    class Ctx:
        settings = conf
        reporter = RecordingReporter()
        during_upgrade = None

    stop_web.warn_first_requests(Ctx)  # type: ignore[arg-type]
    assert len(Ctx.reporter.lines) == 1 and "PythonImport" in Ctx.reporter.lines[0]
    assert Ctx.reporter.lines[0].startswith("warning: students' first requests")
    planned = stop_web.plan_lines(Ctx, None)  # type: ignore[arg-type]
    assert planned[-1] == Ctx.reporter.lines[0]  # the same one line, in the plan's web part


def test_a_site_file_the_gate_refuses_is_not_read_and_nothing_is_refused(tmp_path):
    conf = layout(tmp_path, "mpm_event", True, ["PythonHandler ivle.dispatch"],
                  conf_lines=["PythonImport ivle.dispatch ivle"], site_enabled=True)
    (tmp_path / "apache2" / "conf-enabled" / "other.conf").chmod(0o666)  # others may write
    assert first_requests.at_risk(conf) == ["ivle"]  # the import it says is not believed


@pytest.mark.parametrize("place", ELSEWHERE)
def test_a_server_wide_import_anywhere_apache_reads_it_counts(tmp_path, place):
    conf = layout(tmp_path, "mpm_event", True, ["PythonHandler ivle.dispatch"],
                  conf_lines=["PythonImport ivle.dispatch ivle"], site_enabled=True,
                  conf_file=place)
    assert first_requests.at_risk(conf) == []

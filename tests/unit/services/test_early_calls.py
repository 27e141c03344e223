"""The gate on the new postinst: a service acted on above its ivle-maint line
is found in generated scripts however the call is written, the preinst's
preflight refuses a restart and warns of a start, and the maintainer
scripts ivle-maint ships keep debhelper's marker on a line of its own."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.output import RecordingReporter
from ivle_maint.services import early_calls
from ivle_maint.services.early_calls import ACTING, STARTS
from ivle_maint.steps import restart_usrmgt, start_web

# ivle-maint's own reading of maintainer scripts, no library's behaviour: Debian's suite only.
pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[3]
USRMGT = "ivle-usrmgt-server"
SERVICES = (USRMGT, "apache2", "postgresql")
ACTIONS = sorted(ACTING | STARTS | {"status", "is-enabled", "show"})
MARKER = "#DEBHELPER#"

# debhelper's snippet for an init script (compat 13): restart on upgrade.
TRAP_SNIPPET = f"""\
# Automatically added by dh_installinit/13.11.4
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] ; then
\tif [ -z "${{DPKG_ROOT:-}}" ] && [ -x "/etc/init.d/{USRMGT}" ]; then
\t\tupdate-rc.d {USRMGT} defaults >/dev/null
\t\tif [ -n "$2" ]; then
\t\t\t_dh_action=restart
\t\telse
\t\t\t_dh_action=start
\t\tfi
\t\tinvoke-rc.d --skip-systemd-native {USRMGT} $_dh_action || exit 1
\tfi
fi
# End automatically added section"""


@dataclass(frozen=True)
class Call:
    service: str
    action: str
    text: str
    variable: bool = False  # its action read from $_dh_action, assigned before it


def _quoted(word: str, how: str) -> str:
    return {"plain": word, "single": f"'{word}'", "double": f'"{word}"'}[how]


@st.composite
def calls(draw: st.DrawFn) -> Call:
    """One service call, written as a maintainer script may write it."""
    service = draw(st.sampled_from(SERVICES))
    action = draw(st.sampled_from(ACTIONS))
    quote = draw(st.sampled_from(["plain", "single", "double"]))
    unit = service + draw(st.sampled_from(["", ".service"]))
    form = draw(st.sampled_from(["invoke-rc.d", "service", "systemctl", "deb-systemd-invoke",
                                 "init.d"]))
    options = draw(st.sampled_from(["", "--quiet ", "--skip-systemd-native ", "--no-block "]))
    written = draw(st.sampled_from(["word", "variable", "braced", "unknown"]))
    assign = ""
    if written == "unknown":  # a variable never assigned: counted as acting
        action = "$whatever"
    elif written != "word":  # as debhelper's `$_dh_action`, assigned before
        assign = f"_dh_action={action}; "
        action = "$_dh_action" if written == "variable" else "${_dh_action}"
    command = {
        "invoke-rc.d": f"invoke-rc.d {options}{_quoted(service, quote)} {action}",
        "service": f"service {_quoted(service, quote)} {action}",
        "systemctl": f"systemctl {options}{action} {_quoted(unit, quote)}",
        "deb-systemd-invoke": f"deb-systemd-invoke {options}{action} {_quoted(unit, quote)}",
        "init.d": f"/etc/init.d/{service} {action}",
    }[form]
    if draw(st.booleans()):  # continued on the next line after its first word
        first, rest = command.split(" ", 1)
        command = f"{first} \\\n\t{rest}"
    before = draw(st.sampled_from(["", "\t", "if ", "X=1 ", "then ", "! ", "[ $# -gt 0 ] && ",
                                   'echo "#" && ', "A='#x' "]))
    after = draw(st.sampled_from(["", " || exit 1", " >/dev/null 2>&1", "; true",
                                  " # restart it", ' "$@"']))
    meant = action if written in ("word", "unknown") else assign[len("_dh_action="):-2]
    return Call(service, meant, assign + before + command + after, bool(assign))


HOOK_LINES = ['ivle-maint hook postinst "$@"', '/usr/sbin/ivle-maint hook postinst "$@"',
              'if [ "$1" = configure ]; then ivle-maint hook postinst "$@"; fi',
              '    ivle-maint --config /etc/ivle/ivle-maint.conf hook postinst "$@"']
NOISE = ["", "set -e", "#!/bin/sh", f"# the {USRMGT} restart comes later",
         f"echo 'invoke-rc.d {USRMGT} restart'", "update-rc.d ivle-usrmgt-server defaults",
         "command -v ivle-maint >/dev/null", "exit 0", "# ivle-maint hook postinst later"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(calls(), st.sampled_from(NOISE)), max_size=12),
       st.lists(st.one_of(calls(), st.sampled_from(NOISE)), max_size=6),
       st.sampled_from(HOOK_LINES), st.booleans(),
       st.sets(st.sampled_from(SERVICES), min_size=1))
def test_every_call_above_the_ivle_maint_line_is_found_and_none_below(
        above, below, hook, has_hook, watched):
    parts = [*above, *([hook] if has_hook else []), *below]
    lines: list[str] = []
    expected = []
    assigned: set[str] = set()  # a variable's values: any of them, whatever the flow
    for index, part in enumerate(parts):
        text = part.text if isinstance(part, Call) else part
        counted = not has_hook or index < len(above)
        if isinstance(part, Call) and part.variable:
            assigned.add(part.action)
        if isinstance(part, Call) and part.service in watched and counted:
            meant = sorted(assigned) if part.variable else [part.action]
            expected += [(part.service, action, len(lines) + 1) for action in meant
                         if action in ACTING | STARTS or action.startswith("$")]
        lines += text.split("\n")
    found = early_calls.order("\n".join(lines), watched)
    assert [(c.service, c.action, c.line) for c in found.calls] == expected
    assert found.calls_ivle_maint == has_hook


def shipped_scripts() -> list[Path]:
    hooks = sorted((REPO / "scripts" / "ivle-hooks").iterdir())
    own = sorted(p for p in (REPO / "debian").iterdir()
                 if re.fullmatch(r"[^.]+\.(preinst|postinst|prerm|postrm)", p.name))
    return hooks + own


@pytest.mark.parametrize("path", shipped_scripts(), ids=lambda p: p.name)
def test_each_shipped_script_has_debhelpers_marker_once_on_its_own_line(path):
    # debhelper replaces the marker wherever it stands, a comment included.
    text = path.read_text()
    assert text.count(MARKER) == 1, f"{path}: {MARKER} {text.count(MARKER)} times"
    assert MARKER in text.splitlines()


def debhelper_fills(script: str, snippet: str) -> str:
    return script.replace(MARKER, snippet)  # as debhelper does: every occurrence


def test_the_postinst_ivle_maint_ships_calls_ivle_maint_before_any_snippet():
    template = (REPO / "scripts" / "ivle-hooks" / "postinst").read_text()
    found = early_calls.order(debhelper_fills(template, TRAP_SNIPPET), {USRMGT})
    assert found.calls_ivle_maint and found.calls == ()
    # The marker in a comment, as the template once had it: the snippet ran first.
    broken = template.replace("# The ivle-maint line comes before debhelper's line below",
                              f"# The line comes BEFORE {MARKER}")
    assert early_calls.order(debhelper_fills(broken, TRAP_SNIPPET), {USRMGT}).calls


class Ctx:
    """What the check reads of an upgrade's context."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = load_settings(None)
        self.reporter = RecordingReporter()
        self.package = "ivle"
        self.new = "1.1"


def incoming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postinst: str) -> Ctx:
    """dpkg's preinst of ivle 1.1, the new control archive in tmp.ci."""
    tmp = tmp_path / "tmp.ci"
    tmp.mkdir()
    (tmp / "control").write_text("Package: ivle\nVersion: 1.1\n")
    (tmp / "postinst").write_text(postinst)
    monkeypatch.setenv("DPKG_ADMINDIR", str(tmp_path))
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
    return Ctx(tmp_path)


def test_the_preflight_refuses_a_restart_above_the_ivle_maint_line(tmp_path, monkeypatch):
    script = f"#!/bin/sh\nset -e\n{TRAP_SNIPPET}\nivle-maint hook postinst \"$@\"\n"
    ctx = incoming(tmp_path, monkeypatch, script)
    with pytest.raises(MaintError, match=rf"would restart {USRMGT} before its ivle-maint "
                                         r"line \(line 12: invoke-rc.d"):
        restart_usrmgt.check_new_postinst(ctx)  # type: ignore[arg-type]
    start_web.check_new_postinst(ctx)  # type: ignore[arg-type]  # apache2: not touched
    assert ctx.reporter.lines == []


def test_a_start_above_is_a_warning_and_below_is_nothing(tmp_path, monkeypatch):
    start = f"invoke-rc.d {USRMGT} start"
    ctx = incoming(tmp_path, monkeypatch, f"{start}\nivle-maint hook postinst \"$@\"\n{start}\n")
    restart_usrmgt.check_new_postinst(ctx)  # type: ignore[arg-type]
    assert len(ctx.reporter.lines) == 1
    assert f"starts {USRMGT} before its ivle-maint line (line 1:" in ctx.reporter.lines[0]


def test_a_postinst_without_ivle_maint_is_a_warning(tmp_path, monkeypatch):
    ctx = incoming(tmp_path, monkeypatch, "#!/bin/sh\nset -e\n\nexit 0\n")
    start_web.check_new_postinst(ctx)  # type: ignore[arg-type]
    assert "has no 'ivle-maint hook' line" in ctx.reporter.lines[0]


def test_outside_dpkgs_preinst_nothing_is_read(tmp_path, monkeypatch):
    ctx = incoming(tmp_path, monkeypatch, f"invoke-rc.d {USRMGT} restart\n")
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "postinst")
    restart_usrmgt.check_new_postinst(ctx)  # type: ignore[arg-type]
    ctx.new = "1.2"  # another version's archive: not this upgrade's
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
    restart_usrmgt.check_new_postinst(ctx)  # type: ignore[arg-type]
    assert ctx.reporter.lines == []


def test_a_postinst_others_could_write_is_refused_unread(tmp_path, monkeypatch):
    ctx = incoming(tmp_path, monkeypatch, "ivle-maint hook postinst\n")
    (tmp_path / "tmp.ci" / "postinst").chmod(0o666)
    with pytest.raises(MaintError, match="postinst"):
        restart_usrmgt.check_new_postinst(ctx)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(calls(), min_size=1, max_size=4), st.booleans(), st.booleans(),
       st.sampled_from(["{name}() {{", "{name} () {{", "function {name} {{", "{name}()\n{{"]),
       st.booleans())
def test_a_functions_calls_count_where_it_is_called(body, called_above, one_line, header,
                                                    hook_inside):
    """Defined above the ivle-maint line, a function acts only where it is
    called; one that calls ivle-maint is the ivle-maint line where it is called."""
    name = "restart_services"
    # One command per line, none ending in a comment (joined on one line, a
    # comment would swallow the rest, in sh as here).
    texts = [c.text for c in body if not any(x in c.text for x in "\n;#")]
    if not texts:
        return
    inner = [*texts, 'ivle-maint hook postinst "$@"'] if hook_inside else texts
    head = header.format(name=name)
    if one_line and "\n" not in head:
        definition = [f"{head} {'; '.join(inner)}; }}"]
    else:
        definition = [*head.split("\n"), *(f"\t{t}" for t in inner), "}"]
    hook = [] if hook_inside else ['ivle-maint hook postinst "$@"']
    script = ["#!/bin/sh", "set -e", *definition,
              *([name, *hook] if called_above else [*hook, name])]
    found = early_calls.order("\n".join(script), set(SERVICES))
    assert found.calls_ivle_maint  # the line itself, or the function's call
    # What runs before ivle-maint: a function called above the line, or the
    # calls inside one that calls ivle-maint itself; never one called below.
    counted = [c for c in body if c.text in texts] if hook_inside or called_above else []
    wanted = sum(len(_meant(c, body)) for c in counted)
    assert len(found.calls) == wanted
    assert all(c.text == name for c in found.calls)  # reported where it is called


def _meant(call: Call, body: list[Call]) -> list[str]:
    """The actions a call in BODY stands for (a variable: every value assigned)."""
    if call.variable:
        values = {c.action for c in body if c.variable}
        return [a for a in values if a in ACTING | STARTS]
    return [call.action] if call.action in ACTING | STARTS or call.action.startswith("$") else []

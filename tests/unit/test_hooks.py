"""Every way dpkg calls a maintainer script is handled or refused clearly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.dpkg_calls import FORMS, parse_call
from ivle_maint.errors import MaintError

# Debian Policy 6.5/6.6: every calling form of the four scripts.
POLICY_FORMS = [
    ("preinst", ["install"]), ("preinst", ["install", "1.0"]),
    ("preinst", ["install", "1.0", "1.1"]),
    ("preinst", ["upgrade", "1.0", "1.1"]), ("preinst", ["abort-upgrade", "1.1"]),
    ("postinst", ["configure", "1.0"]), ("postinst", ["configure", ""]),
    ("postinst", ["abort-upgrade", "1.1"]), ("postinst", ["abort-remove"]),
    ("postinst", ["abort-deconfigure", "in-favour", "x", "1"]),
    ("prerm", ["remove"]), ("prerm", ["upgrade", "1.1"]), ("prerm", ["failed-upgrade", "1.0"]),
    ("prerm", ["deconfigure", "in-favour", "x", "1"]),
    ("prerm", ["deconfigure", "in-favour", "x", "1", "removing", "y", "2"]),
    ("postinst", ["abort-deconfigure", "in-favour", "x", "1", "removing", "y", "2"]),
    ("prerm", ["remove", "in-favour", "x", "1"]),
    ("postinst", ["abort-remove", "in-favour", "x", "1"]),
    ("postrm", ["remove"]), ("postrm", ["purge"]), ("postrm", ["upgrade", "1.1"]),
    ("postrm", ["failed-upgrade", "1.0"]), ("postrm", ["abort-install"]),
    ("postrm", ["abort-install", "1.0"]), ("postrm", ["abort-upgrade", "1.0"]),
    ("postrm", ["abort-upgrade", "1.0", "1.1"]), ("postrm", ["failed-upgrade", "1.0", "1.1"]),
    ("postrm", ["disappear", "other", "2"]),
]


@pytest.mark.parametrize(("script", "argv"), POLICY_FORMS)
def test_every_policy_form_is_accepted(script, argv):
    call = parse_call(script, argv, "ivle", "1.1")
    assert (call.script, call.action) in FORMS
    assert call.args == tuple(argv[1:])


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("postinst", ["frobnicate"], "postinst called with unknown argument 'frobnicate'"),
        ("preinst", [], "preinst: no action given"),
        ("preinst", ["upgrade", "1.0"], "preinst upgrade: unexpected arguments 1.0"),
    ],
)
def test_bad_calls_are_one_line_errors(script, argv, message):
    with pytest.raises(MaintError) as caught:
        parse_call(script, argv, "ivle", "1.1")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "argv",
    [
        ["hook", "postinst", "frobnicate"],
        ["hook", "preinst"],
        ["hook", "preinst", "upgrade", "1.0"],
        ["hook", "preinst", "upgrade", "1.0", "1.1\n"],
        ["hook", "postinst", "configure", "1.0; rm -rf /"],
        ["hook", "--package-version", "1.1\n", "postinst", "configure", "1.0"],
    ],
)
def test_bad_hook_arguments_exit_2_as_documented(tmp_path, capsys, argv):
    """Bad input is exit status 2 (ivle-maint --help, README), not a failed step's 1."""
    from ivle_maint.cli import EXIT_STATUSES, main

    settings = tmp_path / "maint.conf"
    settings.write_text(f"[paths]\nstate = {tmp_path}/state\nrun = {tmp_path}/run\n")
    assert main(["--config", str(settings), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ivle-maint: error: ")
    assert "2   bad input: settings, ivle.conf, the command line (dpkg's arguments\n" \
           "      to 'hook' too)" in EXIT_STATUSES
    assert not (tmp_path / "state").exists()


def test_dpkg_options_take_accepted_classes_from_the_environment():
    from ivle_maint.hooks import dpkg_options

    options = dpkg_options({"IVLE_MAINT_ACCEPT_CLASS": "20100101-01, 20100102-01"})
    assert options.accept_class == ("20100101-01", "20100102-01")
    assert dpkg_options({}).accept_class == ()


def test_every_form_has_a_handler():
    from ivle_maint.dpkg_calls import Form
    from ivle_maint.hooks import HANDLERS

    assert set(HANDLERS) == set(Form) == set(FORMS.values())


NOTHING_FORMS = [(script, argv) for script, argv in POLICY_FORMS
                 if FORMS[(script, argv[0])] == "nothing"]


@pytest.mark.parametrize(("script", "argv"), NOTHING_FORMS)
def test_a_call_that_stands_for_nothing_loads_no_procedure(tmp_path, script, argv):
    """The old postrm's `upgrade` runs while the web server is down: it pays
    for ivle-maint's start-up, never for loading the procedure."""
    import json
    import subprocess
    import sys

    settings = tmp_path / "maint.conf"
    settings.write_text(f"[paths]\nstate = {tmp_path}/state\nrun = {tmp_path}/run\n")
    code = ("import json, sys\nfrom ivle_maint.cli import main\n"
            f"status = main({['--config', str(settings), 'hook', script, *argv]!r})\n"
            "print(json.dumps([status, sorted(sys.modules)]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    status, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 0
    assert f"{script} {argv[0]}: nothing to do" in done.stdout + done.stderr
    heavy = {"ivle_maint.hooks", "ivle_maint.procedure", "ivle_maint.upgrade",
             "ivle_maint.runner", "psycopg2", "sh", "debian", "psutil", "pglast"}
    assert not heavy & set(modules), sorted(heavy & set(modules))
    assert not (tmp_path / "state").exists()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_unpack_together_from_the_environment_is_yes_no_or_refused(value):
    """IVLE_MAINT_UNPACK_TOGETHER (the playbook's): yes or no, unset or empty
    leaves it to the setting, anything else is a one-line usage error."""
    from ivle_maint.errors import UsageError
    from ivle_maint.hooks import dpkg_options

    word = value.strip().lower()
    if word in ("yes", "true", "1"):
        assert dpkg_options({"IVLE_MAINT_UNPACK_TOGETHER": value}).unpack_together is True
    elif word in ("no", "false", "0"):
        assert dpkg_options({"IVLE_MAINT_UNPACK_TOGETHER": value}).unpack_together is False
    elif not word:
        assert dpkg_options({"IVLE_MAINT_UNPACK_TOGETHER": value}).unpack_together is None
    else:
        with pytest.raises(UsageError) as refused:
            dpkg_options({"IVLE_MAINT_UNPACK_TOGETHER": value})
        assert "\n" not in str(refused.value)
        assert str(refused.value).startswith("IVLE_MAINT_UNPACK_TOGETHER must be yes or no")


# -- generated calls: every version slot of the forms that act ----------------------

# The forms that run or undo a phase, with their version slots: True where
# dpkg may give an empty string (postinst configure of a first install).
ACTIVE_SLOTS: dict[tuple[str, str], tuple[bool, ...]] = {  # written out: the test is the spec
    ("preinst", "upgrade"): (False, False),
    ("postinst", "configure"): (True,), ("postinst", "reconfigure"): (True,),
    ("postinst", "abort-upgrade"): (False,), ("postrm", "abort-upgrade"): (False, False),
}

_UPSTREAM = st.from_regex(r"[0-9][A-Za-z0-9.+~]{0,12}", fullmatch=True)
_GOOD = st.builds(lambda e, u, r: f"{e}{u}{r}",
                  st.sampled_from(["", "1:", "0:", "12:"]), _UPSTREAM,
                  st.sampled_from(["", "-1", "-0ubuntu1", "-1+b2", "-a-1"]))
# What a hostile or broken caller gives: empty, spaces, controls, no leading
# digit, an empty revision, an epoch alone, a version too long to name a file.
HOSTILE = st.one_of(
    st.sampled_from(["", " ", "1.1\n", "1.1 ", "-1", "none", "1.0-", "1.0-1-", "1:", "~",
                     "1::2", "a1", "1.1\x1b[2J", "1" * 101, "1." + "1" * 240]),
    st.text(max_size=8),
    _GOOD.map(lambda v: v + "x" * 100),
)


def dpkg_says_valid(text: str, *, names: bool = True) -> bool:
    """The oracle: dpkg's own parser (no warning), on a text with nothing to
    strip and an epoch as dpkg writes one.  dpkg reads the epoch with
    strtol, which also takes "+1:" and "-0:", but a maintainer script never
    gets them: dpkg passes the version as it formats it ("1:1.0", "1.0").
    NAMES: the version names a journal and a log, so it fits in a name."""
    import subprocess

    if not text or text != text.strip() or not text.isprintable() or \
            (names and len(text) > 100):
        return False
    if ":" in text and text.partition(":")[0][:1] in ("+", "-"):
        return False
    done = subprocess.run(["dpkg", "--validate-version", "--", text], capture_output=True,
                          check=False)
    return done.returncode == 0 and not done.stderr


@settings(max_examples=60, deadline=None)
@given(form=st.sampled_from(sorted(ACTIVE_SLOTS)), data=st.data())
def test_a_generated_call_is_checked_slot_by_slot_as_dpkg_would(form, data):
    """Every version a phase is named after passes dpkg's own syntax; an
    empty one only where dpkg gives one (postinst configure's OLD), and
    --package-version never empty: `preinst upgrade '' 1.1` once ran the
    before-phase (the site stopped, a baseline 'of ""' recorded), exit 0."""
    from ivle_maint.errors import UsageError
    from ivle_maint.hooks import checked_call

    script, action = form
    slots = ACTIVE_SLOTS[form]
    args = [data.draw(st.one_of(_GOOD, HOSTILE), label=f"arg{i}") for i in range(len(slots))]
    version = data.draw(st.one_of(_GOOD, HOSTILE), label="package_version")
    # The undoing calls' versions only select journals: any length dpkg takes
    # (dpkg's unwind of a preinst that refused a long one must go through).
    names = action != "abort-upgrade"
    ok = all((empty_ok and arg == "") or dpkg_says_valid(arg, names=names)
             for arg, empty_ok in zip(args, slots, strict=True)) and \
        dpkg_says_valid(version, names=names)
    call = parse_call(script, [action, *args], "ivle", version)
    if ok:
        assert checked_call(call, version).package_version == version
        return
    with pytest.raises(UsageError) as refused:
        checked_call(call, version)
    line = str(refused.value)
    assert "\n" not in line and len(line) < 300, line
    assert line.startswith(f"{script} {action}: "), line


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789az.+~-:_ \n²", max_size=10))
def test_a_version_is_taken_exactly_when_dpkgs_own_parser_takes_it(text):
    """versions.check, the gate of every version (hook calls, the command
    line, the journal), against dpkg --validate-version itself."""
    from ivle_maint.versions import check

    try:
        check(text)
    except MaintError as exc:
        assert not dpkg_says_valid(text), text
        assert "\n" not in str(exc)
    else:
        assert dpkg_says_valid(text), text


@settings(max_examples=100, deadline=None)
@given(package=st.text(alphabet="abz09+-.: A\n", max_size=6), from_env=st.booleans())
def test_a_package_name_is_taken_only_as_policy_spells_one(package, from_env):
    """DPKG_MAINTSCRIPT_PACKAGE (or --package) names dpkg-query's argument,
    the journal's package and a printed `apt-get install PACKAGE=NEW`."""
    import re

    from ivle_maint.errors import UsageError

    with pytest.MonkeyPatch.context() as patched:
        if from_env:
            patched.setenv("DPKG_MAINTSCRIPT_PACKAGE", package)
        else:
            patched.delenv("DPKG_MAINTSCRIPT_PACKAGE", raising=False)
        if re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", package):
            assert parse_call("preinst", ["upgrade", "1.0", "1.1"], package, None).package \
                == package
            return
        with pytest.raises(UsageError) as refused:
            parse_call("preinst", ["upgrade", "1.0", "1.1"], package, None)
    assert "\n" not in str(refused.value)
    how = "DPKG_MAINTSCRIPT_PACKAGE" if from_env else "--package"
    assert str(refused.value).startswith(f"preinst upgrade: {how} is no package name: ")


@pytest.mark.parametrize("text", ["+1:1.0", "-0:1.0"])
def test_a_signed_epoch_dpkg_would_format_away_is_refused(text):
    """dpkg's strtol takes a sign before the epoch, but dpkg never passes
    one to a maintainer script: refused, as any text no hook call holds."""
    from ivle_maint.versions import check

    with pytest.raises(MaintError):
        check(text)

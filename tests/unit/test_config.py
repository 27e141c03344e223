"""Settings and ivle.conf: defaults, interpolation, overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cli import main
from ivle_maint.config import (
    IVLE_CONF_SPEC,
    SETTINGS_SPEC,
    load_ivle_conf,
    load_settings,
    settings_file,
)
from ivle_maint.errors import ConfigError

IVLE_CONF = """\
# the administrator's comments
[paths]
prefix = /opt/ivle
data = /srv/ivle
    [[jails]]
    src = ${data}/jails-src
[media]
version = 2.3   # bump per upgrade
[database]
port = 5433
"""


def test_ivle_conf_interpolates_and_fills_ivle_defaults(tmp_path):
    (tmp_path / "ivle.conf").write_text(IVLE_CONF)
    conf = load_ivle_conf(tmp_path)
    assert conf.jail_mounts == Path("/srv/ivle/jailmounts")
    assert conf.jail_src == Path("/srv/ivle/jails-src")
    assert conf.jail_template == Path("/srv/ivle/jails-src/__base__")
    assert conf.share == Path("/opt/ivle/share/ivle")
    assert conf.media_version == "2.3"
    assert conf.database["port"] == 5433 and conf.database["name"] == "ivle"


def test_ivle_conf_dir_follows_ivleconf(tmp_path, monkeypatch):
    (tmp_path / "ivle.conf").write_text("[media]\n")
    settings_path = tmp_path / "maint.conf"
    settings_path.write_text("[node]\nrole = slave\n")
    monkeypatch.setenv("IVLECONF", str(tmp_path))
    settings = load_settings(str(settings_path))
    assert settings.ivle_conf_dir == tmp_path
    assert settings.ivle_conf().media_version is None
    assert settings.role == "slave"


def test_settings_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("IVLE_MAINT_CONF", raising=False)
    assert settings_file() == Path("/etc/ivle/ivle-maint.conf")
    monkeypatch.setenv("IVLE_MAINT_CONF", str(tmp_path / "given.conf"))
    assert settings_file() == tmp_path / "given.conf"
    assert settings_file("/explicit.conf") == Path("/explicit.conf")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nrole = master\nnonsense\n",
         "line 3: Invalid line ('nonsense') (matched as neither section nor keyword)"),
        ("[node]\nrole = mister\n", ': [node/role]: the value "mister" is unacceptable.'),
        ("[services]\ntimeout = soon\n", ': [services/timeout]: the value "soon" is of the wrong'),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_file(tmp_path, text, message):
    path = tmp_path / "maint.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_named_settings_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(str(tmp_path / "missing.conf"))


def test_cli_turns_a_bad_file_into_one_line_and_status_2(tmp_path, capsys):
    path = tmp_path / "maint.conf"
    path.write_text("[node\nrole = both\n")
    assert main(["--config", str(path), "settings"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ivle-maint: error: {path} line 1:")


def test_cli_version_and_spec(capsys):
    from ivle_maint import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ivle-maint {__version__}"
    assert main(["settings", "--spec"]) == 0
    assert "lazy_unmount = boolean(default=False)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[path]\nstate = /srv/state\n", "unknown section [path] (did you mean [paths]?)"),
        ("[jails]\nlazy_unmuont = true\n",
         "[jails]: unknown key lazy_unmuont (did you mean lazy_unmount?)"),
        ("[database]\nbackup_keep = 3\n[[extra]]\n", "unknown section [database][extra]"),
        ("role = master\n", "top level: unknown key role"),
        ("[cluster]\nmaster_timout = 30\n",
         "[cluster]: unknown key master_timout (did you mean master_timeout?)"),
    ],
)
def test_unknown_settings_are_errors_with_the_nearest_name(tmp_path, capsys, text, message):
    """A typo is not silently ignored: `settings` refuses it (exit 2), file untouched."""
    path = tmp_path / "maint.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert str(caught.value) == f"{path}: {message}"
    assert main(["--config", str(path), "settings"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ivle-maint: error: {path}: {message}"]
    assert path.read_text() == text


def test_ivle_conf_keeps_keys_ivle_maint_does_not_know(tmp_path):
    """ivle.conf is IVLE's: keys ivle-maint has no use for are not its business."""
    (tmp_path / "ivle.conf").write_text("[urls]\nroot = /\n[database]\nname = x\nextra = 1\n")
    assert load_ivle_conf(tmp_path).database["name"] == "x"


# ivle.conf's ${name} references are IVLE's template interpolation: one to
# a name that is not there, or a loop, is the administrator's mistake in a
# file, never a bug, wherever the value sits (a key of IVLE's spec or one
# ivle-maint does not know) and whenever it is read.
_REFS = ["${data}", "${prefix}", "${nope}", "${src}", "${paths}", "$${data}", "$$", "${}",
         "${a}", "${b}", "x", "/srv/${a}", "%(data)s"]


@st.composite
def _interpolating_conf(draw) -> str:
    def value() -> str:
        return "".join(draw(st.lists(st.sampled_from(_REFS), min_size=1, max_size=3)))

    keys = st.sampled_from(["data", "prefix", "share", "a", "b", "extra"])
    paths = {k: value() for k in draw(st.lists(keys, max_size=4, unique=True))}
    jails = {k: value() for k in draw(st.lists(st.sampled_from(["src", "mounts", "a"]),
                                                max_size=2, unique=True))}
    database = {k: value() for k in draw(st.lists(st.sampled_from(["name", "a", "b"]),
                                                   max_size=2, unique=True))}
    lines = ["[paths]", *(f"{k} = {v}" for k, v in paths.items()), "[[jails]]",
             *(f"{k} = {v}" for k, v in jails.items()), "[database]",
             *(f"{k} = {v}" for k, v in database.items())]
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_interpolating_conf())
def test_an_interpolation_that_cannot_be_made_is_one_line_however_it_is_read(tmp_path, text):
    (tmp_path / "ivle.conf").write_text(text)
    try:
        ivle = load_ivle_conf(tmp_path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{tmp_path}/ivle.conf")
        return
    # Loaded: every value reads, by every way ivle-maint reads one.
    assert isinstance(ivle.conf.dict(), dict)
    assert isinstance(ivle.database, dict)
    for path in (ivle.jail_mounts, ivle.jail_src, ivle.jail_template, ivle.share):
        assert isinstance(path, Path)


def _float_settings() -> list[tuple[str, str]]:
    """(section, key) of every float in the settings spec."""
    import re

    found, section = [], ""
    for line in SETTINGS_SPEC.splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            section = match.group(1)
        elif match := re.match(r"^(\w+) = float\(", line):
            found.append((section, match.group(1)))
    return found


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(_float_settings()),
       value=st.sampled_from(["nan", "NaN", "-nan", "inf", "+inf", "Infinity", "1e400", "1e999"]))
def test_a_number_of_seconds_that_is_no_number_is_a_one_line_error(tmp_path, where, value):
    """nan and inf pass configobj's float(min=0) (nan < 0 is false; 1e400
    is inf): before, `[services] timeout = nan` reached the first wait as a
    traceback (poll: "Invalid value NaN"), inf as another ("timestamp too
    large"), a wait on nan never ended."""
    section, key = where
    path = tmp_path / "maint.conf"
    path.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert str(caught.value).startswith(f"{path}: [{section}/{key}]: ")
    assert "\n" not in str(caught.value)


def test_a_service_timeout_of_zero_is_refused(tmp_path):
    """[services] timeout = 0 left the action unbounded (a hanging init
    script waited for ever: `timeout or None`) and its state unwaited for
    (a stop that takes a moment failed '0s after')."""
    path = tmp_path / "maint.conf"
    path.write_text("[services]\ntimeout = 0\n")
    with pytest.raises(ConfigError, match=r"\[services/timeout\]"):
        load_settings(str(path))


_UNPRINTABLE = st.lists(st.sampled_from(["\n[database]\nconnect_as = postgres", "\r", "\x1b[2J",
                                         "\x1b]8;;http://x\x07", "\u202e", "\x85", "\u2028",
                                         "\t", "\x7f", "a"]),
                        min_size=1, max_size=4).map("".join).filter(lambda v: not v.isprintable())


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_UNPRINTABLE, where=st.sampled_from([("paths", "state"), ("services", "web"),
                                                  ("node", "name"), ("commands", "buildjail")]))
def test_a_setting_holding_a_line_break_or_a_control_is_refused_in_one_line(
        tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
        value: str, where: tuple[str, str]) -> None:
    """A value (a configobj '''...''' may span lines) with a line break or a
    control character: `settings` would show it as lines of its own (a
    forged "[database] connect_as = postgres"); refused, one line, exit 2,
    nothing on stdout."""
    path = tmp_path_factory.mktemp("settings") / "ivle-maint.conf"
    path.write_text(f"[{where[0]}]\n{where[1]} = '''/{value}'''\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"\[{where[0]}/{where[1]}\]: .* not printable"):
        load_settings(str(path))
    assert main(["--config", str(path), "settings"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("ivle-maint: error: ")
    assert err.rstrip("\n").isprintable()


def _spec_places(spec: str) -> list[tuple[tuple[str, ...], str, bool]]:
    """(sections, name, is_section) of every entry of SPEC."""
    from configobj import ConfigObj

    places: list[tuple[tuple[str, ...], str, bool]] = []

    def walk(section: Any, where: tuple[str, ...]) -> None:
        places.extend((where, name, False) for name in section.scalars)
        for name in section.sections:
            places.append((where, name, True))
            walk(section[name], (*where, name))

    walk(ConfigObj(spec.splitlines(), list_values=False, _inspec=True), ())
    return places


def _header(depth: int, name: str) -> str:
    return f"{'[' * depth}{name}{']' * depth}\n"


def _refused_text(tmp_path_factory: pytest.TempPathFactory, which: str,
                  text: str) -> tuple[Path, str]:
    """TEXT written as the settings file or ivle.conf (WHICH) and read:
    its path, and the ConfigError's message, one line."""
    directory = tmp_path_factory.mktemp("conf")
    path = directory / ("ivle-maint.conf" if which == "settings" else "ivle.conf")
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path)) if which == "settings" else load_ivle_conf(directory)
    message = str(caught.value)
    assert "\n" not in message
    return path, message


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["settings", "ivle.conf"]), data=st.data(),
       body=st.sampled_from(["", "x = 1\n", "version = 1.0\n"]))
def test_a_section_or_a_value_out_of_its_place_is_one_line_naming_it(
        tmp_path_factory: pytest.TempPathFactory, which: str, data: st.DataObject,
        body: str) -> None:
    """`[media]` then `[[version]]` (a section where IVLE's spec has a
    value, generated over every entry of both specs) made configobj's
    validate() raise AttributeError: a traceback wherever ivle.conf or the
    settings were read.  A value where a section belongs, too.  Each is one
    line naming the file and the entry."""
    spec = SETTINGS_SPEC if which == "settings" else IVLE_CONF_SPEC
    where, name, is_section = data.draw(st.sampled_from(_spec_places(spec)))
    text = "".join(_header(depth, s) for depth, s in enumerate(where, 1))
    depth = len(where) + 1
    text += f"{name} = /srv/x\n" if is_section else _header(depth, name) + body
    path, message = _refused_text(tmp_path_factory, which, text)
    assert message.startswith(f"{path}: [{'/'.join([*where, name])}]: "), message


_FORGING = st.lists(st.sampled_from(["\n[database]\nconnect_as = postgres", "\r", "\x1b[2J", "\t",
                                     "\udcff", "\u202e", "\x85", "a"]),
                    min_size=1, max_size=3).map("".join).filter(lambda v: not v.isprintable())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(given_as=st.sampled_from(["IVLECONF", "IVLE_MAINT_CONF", "--config"]), tail=_FORGING)
def test_a_given_path_holding_a_line_break_or_a_control_is_refused_before_any_output(
        tmp_path_factory: pytest.TempPathFactory, given_as: str, tail: str) -> None:
    """$IVLECONF (or --config, $IVLE_MAINT_CONF naming a file that exists)
    holding a line break was printed as it was by `ivle-maint settings`:
    forged lines ("[database]", "connect_as = postgres"); bytes not UTF-8
    were a UnicodeEncodeError traceback.  Refused, one line, exit 2,
    nothing on stdout."""
    import os
    import subprocess
    import sys

    directory = tmp_path_factory.mktemp("given")
    plain = directory / "ivle-maint.conf"
    plain.write_text("[node]\nrole = slave\n")
    odd = os.fsencode(directory / f"x{tail}")
    with open(odd, "wb") as file:
        file.write(b"[node]\nrole = slave\n")
    env = {k: v for k, v in os.environ.items() if k not in ("IVLECONF", "IVLE_MAINT_CONF")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    argv = [sys.executable, "-m", "ivle_maint", "--config", str(plain), "settings"]
    if given_as == "--config":
        argv[4] = os.fsdecode(odd)
    elif given_as == "IVLE_MAINT_CONF":
        del argv[3:5]
        env["IVLE_MAINT_CONF"] = os.fsdecode(odd)
    else:
        env["IVLECONF"] = os.fsdecode(odd)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                          errors="surrogateescape", stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("ivle-maint: error: ")
    assert done.stderr.rstrip("\n").isprintable()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["settings", "ivle.conf"]), data=st.data(),
       between=st.sampled_from(["", "# a comment\n", "\n"]))
def test_a_duplicate_key_or_section_is_one_line_naming_it(
        tmp_path_factory: pytest.TempPathFactory, which: str, data: st.DataObject,
        between: str) -> None:
    """A key or a section given twice (generated over every entry of both
    specs): before, "line N: Duplicate keyword name", naming neither."""
    spec = SETTINGS_SPEC if which == "settings" else IVLE_CONF_SPEC
    where, name, is_section = data.draw(st.sampled_from(_spec_places(spec)))
    text = "".join(_header(depth, s) for depth, s in enumerate(where, 1))
    entry = _header(len(where) + 1, name) if is_section else f"{name} = /srv/x\n"
    text += entry + between + entry
    path, message = _refused_text(tmp_path_factory, which, text)
    assert message.startswith(f"{path} line "), message
    assert message.endswith(f": {entry.strip()}"), message


_SERVICE_NAMES = st.one_of(
    st.sampled_from(["apache2.service", "../x", "..", ".", "-h", "apache2 -x", "a/b", "",
                     "a" * 201, "a" * 200, "ivle-usrmgt-server", "apache2@main", "x\u00a0y"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=12)
    .filter(lambda name: not ("'" in name and '"' in name)),  # one quoting holds it
)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["web", "usrmgt"]), name=_SERVICE_NAMES)
def test_a_service_name_is_an_init_scripts_name_or_one_line_naming_the_key(
        tmp_path_factory: pytest.TempPathFactory, key: str, name: str) -> None:
    """`[services] web = apache2.service` put the schema hold's drop-in in
    apache2.service.service.d (systemd never reads it: the hold held
    nothing), and `../x` ran a program outside the init script directory
    and named pidfiles elsewhere.  Now a name the settings take is one
    file name in each directory it becomes a name in, and no option."""
    directory = tmp_path_factory.mktemp("conf")
    path = directory / "ivle-maint.conf"
    path.write_text(f"[services]\n{key} = '{name}'\n" if "'" not in name
                    else f'[services]\n{key} = "{name}"\n')
    try:
        taken = load_settings(str(path))["services"][key]
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and f"[services/{key}]: " in message, message
        return
    assert taken == name.strip() or taken == name
    base = Path("/etc/init.d")
    assert (base / taken).parent == base and taken not in (".", "..")
    assert not taken.startswith("-") and not taken.endswith(".service")
    assert taken.isprintable() and not any(c.isspace() for c in taken)


_SITE_LISTS = st.lists(st.one_of(
    st.sampled_from(["ivle", "ivle.conf", "000-default", "ivle-ssl", "example.org", "", " ",
                     "-h", "--purge", "../x", "..", ".", "a/b", "a b", "*", "a" * 201]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10)
    .filter(lambda name: not ("'" in name and '"' in name))), max_size=3)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=_SITE_LISTS)
def test_web_sites_name_at_least_one_site_each_a_sites_name_or_one_line(
        tmp_path_factory: pytest.TempPathFactory, names: list[str]) -> None:
    """`[web] sites` decides which of Apache's sites are IVLE's: the
    maintenance page disables them (a2dissite NAME) and the schema hold
    lets Apache start while none of them is enabled.  Empty (`sites = ,`,
    `sites = ""`), it named none: the hold let Apache start mid-upgrade
    with IVLE's site enabled, and stop-web in maintenance mode disabled
    nothing and reloaded Apache on IVLE's old code; `-h` or `../x` went to
    a2dissite as an option or a path.  Now the settings take a list of at
    least one site name, or refuse it in one line naming the key."""
    directory = tmp_path_factory.mktemp("conf")
    path = directory / "ivle-maint.conf"
    quoted = [f"'{n}'" if "'" not in n else f'"{n}"' for n in names]
    value = ", ".join(quoted) if len(quoted) > 1 else (quoted[0] + "," if quoted else ",")
    path.write_text(f"[web]\nsites = {value}\n")
    try:
        taken = load_settings(str(path))["web"]["sites"]
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "[web/sites]" in message, message
        return
    from ivle_maint.gates.schema_hold import ivle_sites

    sites = ivle_sites(load_settings(str(path)))
    assert taken and sites, (names, taken)
    base = Path("/etc/apache2/sites-available")
    for name in sites:
        assert (base / f"{name}.conf").parent == base and name not in (".", "..")
        assert not name.startswith(("-", ".")) and name.isprintable()
        assert not any(c.isspace() for c in name) and "*" not in name

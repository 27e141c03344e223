"""release_needs: which files are which, and the decision table, against a model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint import release_needs as rn
from ivle_maint.context import Role
from ivle_maint.errors import MaintError

# Paths of each kind as IVLE's package (or source tree) has them.
EXAMPLES = {
    rn.Kind.CODE: ["usr/lib/python3/dist-packages/ivle/webapp/console/service.py",
                   "usr/share/ivle/services/python-console", "usr/bin/ivle-buildjail",
                   "ivle/database.py", "usr/lib/ivle/ivle/__init__.py"],
    rn.Kind.MEDIA: ["usr/lib/python3/dist-packages/ivle/webapp/console/media/console.js",
                    "ivle/webapp/media/images/logo.png", "usr/share/ivle/media/ivle.css"],
    rn.Kind.MIGRATION: ["usr/share/ivle/userdb/migrations/20090212-01.sql",
                        "userdb/migrations/README"],
    rn.Kind.DOC: ["usr/share/doc/ivle/changelog.gz", "usr/share/man/man8/ivle-buildjail.8.gz",
                  "doc/man/upgrade.rst"],
    rn.Kind.WEB: ["etc/apache2/sites-available/ivle.conf"],
}


@pytest.mark.parametrize("kind,path", [(k, p) for k, ps in EXAMPLES.items() for p in ps])
def test_each_file_is_classified_by_where_ivle_puts_it(kind: rn.Kind, path: str):
    assert rn.classify(path) is kind
    assert rn.classify("/" + path) is kind  # dpkg's lists may start with a slash


def test_a_file_named_media_is_code_only_its_directory_makes_static_files():
    assert rn.classify("usr/lib/ivle/ivle/media") is rn.Kind.CODE
    assert rn.classify("usr/lib/ivle/ivle/webapp/media.py") is rn.Kind.CODE


# A model package: for each kind, some files; a release changes, adds or
# removes some of them.
kinds = st.sampled_from(list(EXAMPLES))
entries = st.tuples(kinds, st.integers(0, 4), st.text("abcdef0123456789", min_size=1,
                                                        max_size=4))


def path_of(kind: rn.Kind, n: int) -> str:
    base = EXAMPLES[kind][0].rsplit("/", 1)
    return f"{base[0]}/f{n}-{base[1]}"


def files_of(drawn: list[tuple[rn.Kind, int, str]]) -> dict[str, str]:
    return {path_of(kind, n): digest for kind, n, digest in drawn}


@settings(max_examples=300, deadline=None)
@given(old=st.lists(entries, max_size=12), new=st.lists(entries, max_size=12))
def test_changed_finds_exactly_the_files_of_a_kind_that_differ(old, new):
    before, after = files_of(old), files_of(new)
    for kind in rn.Kind:
        model = {p for p in {*before, *after}
                 if any(p == path_of(k, n) for k, n, _ in [*old, *new] if k is kind)
                 and before.get(p) != after.get(p)}
        assert set(rn.changed(before, after, kind)) == model
        # The fingerprint of a kind moves exactly when one of its files changes.
        assert (rn.digest_of(before, kind) != rn.digest_of(after, kind)) == bool(model)


def slave_ctx(old: str, new: str) -> Any:
    """What _jail, _media and _usrmgt read of a slave's context."""
    conf = {"jail": {"suite": "bookworm"},
            "paths": {"jails": {"template": "/t", "template_build": "/tb"}}}
    return SimpleNamespace(old=old, new=new, settings=SimpleNamespace(role=Role.SLAVE),
                           ivle_conf=SimpleNamespace(conf=conf))


@settings(max_examples=300, deadline=None)
@given(old=st.lists(entries, max_size=12), new=st.lists(entries, max_size=12),
       same_version=st.booleans())
def test_the_decision_table_against_the_model(old, new, same_version):
    before, after = files_of(old), files_of(new)
    ctx = slave_ctx("1.1", "1.1" if same_version else "1.2")
    release = rn.Release(before, after, "test")

    model = {path_of(k, n): k for k, n, _ in [*old, *new]}  # the kind each file was made as

    def differs(kind: rn.Kind) -> bool:
        return any(before.get(p) != after.get(p) for p, k in model.items() if k is kind)

    assert rn._jail(ctx, release)[0] == differs(rn.Kind.CODE)
    assert rn._usrmgt(release)[0] == differs(rn.Kind.CODE)
    assert rn._media(ctx, release)[0] == (not same_version or differs(rn.Kind.MEDIA))
    # Documentation, migrations and Apache's files never change the jail.


def test_what_is_not_known_counts_as_needed():
    ctx = slave_ctx("1.1", "1.1")
    unknown = rn.Release(None, {"usr/lib/ivle/ivle/x.py": "0" * 32}, "test")
    assert rn._jail(ctx, unknown)[0] and rn._usrmgt(unknown)[0] and rn._media(ctx, unknown)[0]


def test_the_jails_settings_are_part_of_its_inputs():
    ctx = slave_ctx("1.1", "1.1")
    digest = rn.jail_settings_digest(ctx.ivle_conf.conf)
    ctx.ivle_conf.conf["jail"]["mirror"] = "http://mirror.example/debian"
    assert rn.jail_settings_digest(ctx.ivle_conf.conf) != digest


def test_md5sums_are_read_as_dpkg_writes_them():
    data = (b"764efa883dda1e11db47671c4a3bbd9e  usr/share/ivle/a b.py\n\n"
            b"0123456789abcdef0123456789abcdef  /etc/apache2/x.conf\n")
    assert rn.parse_md5sums(data, "m") == {
        "usr/share/ivle/a b.py": "764efa883dda1e11db47671c4a3bbd9e",
        "etc/apache2/x.conf": "0123456789abcdef0123456789abcdef"}
    with pytest.raises(MaintError, match="m: not an md5sums line"):
        rn.parse_md5sums(b"garbage\n", "m")


def test_the_new_packages_lists_are_read_only_in_its_own_preinst(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp.ci"
    tmp.mkdir()
    (tmp / "control").write_text("Package: ivle\nVersion: 1.1\nDescription: x\n more\n")
    (tmp / "md5sums").write_text("764efa883dda1e11db47671c4a3bbd9e  usr/lib/ivle/x.py\n")
    monkeypatch.setenv("DPKG_ADMINDIR", str(tmp_path))
    monkeypatch.delenv("DPKG_MAINTSCRIPT_NAME", raising=False)
    assert rn.incoming_files("ivle", "1.1") is None  # not dpkg's preinst
    monkeypatch.setenv("DPKG_MAINTSCRIPT_NAME", "preinst")
    assert rn.incoming_files("ivle", "1.1") == {"usr/lib/ivle/x.py":
                                               "764efa883dda1e11db47671c4a3bbd9e"}
    assert rn.incoming_files("ivle", "1.2") is None  # another version's control archive
    assert rn.incoming_files("ivle-doc", "1.1") is None


def test_a_recorded_decision_reads_back_and_a_foreign_one_is_the_full_procedure():
    needs = rn.Needs(False, False, True, False, False, {rn.MEDIA: "static files"}, {"files": "x"})
    assert rn.Needs.from_json(needs.to_json()) == needs
    foreign = rn.Needs.from_json({"outage": False, "something": 1})
    assert foreign.outage and foreign.jail and foreign.media
    assert needs.stays_up and not rn.Needs.full("why").stays_up
    guessed = rn.Needs(False, False, False, False, False, {rn.MEDIA: "same", rn.JAIL: "same"},
                       assumed="a reinstall")
    assert guessed.reason(rn.MEDIA) == "same; assuming a reinstall"
    assert guessed.stays_up.endswith("(; same); assuming a reinstall")


def test_plan_lines_name_the_skipped_step_only():
    assert rn.plan_lines("rebuild-jail", "same inputs") == ["skip rebuild-jail: same inputs"]
    assert rn.plan_lines("rebuild-jail", "") == []


# A file name as a package may ship one: any character but NUL, "\n" and
# "/" at its ends (dpkg's md5sums end a line at "\n" only).
NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n")


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text(NAME_CHARS, min_size=1, max_size=20).filter(
    lambda n: n.strip() and not n.startswith("/")), min_size=1, max_size=5, unique=True),
       digest=st.text("0123456789abcdef", min_size=32, max_size=32))
def test_each_md5sums_line_is_one_file_whatever_its_name_holds(names, digest):
    """A name holding a form feed, U+0085, U+2028 or "\\r" is one file, as
    dpkg wrote it, not two lines (one refused as garbage)."""
    data = "".join(f"{digest}  usr/share/ivle/{n}\n" for n in names).encode()
    assert rn.parse_md5sums(data, "m") == {f"usr/share/ivle/{n}": digest for n in names}


# Paths as a malformed or hostile md5sums line may name them: segments that
# make a skipped kind (doc, media, migrations, Apache's) next to "." and "..".
segments = st.sampled_from(["usr", "share", "doc", "lib", "ivle", "media", "userdb",
                            "migrations", "etc", "apache2", "..", ".", "webapp"])


def resolved(path: str) -> str | None:
    """Where PATH really is (its ".." resolved), None when it leaves the root."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


@settings(max_examples=60, deadline=None)
@given(dirs=st.lists(segments, min_size=1, max_size=7), leaf=st.sampled_from(["x.py", "a.js"]))
def test_a_file_counts_as_skippable_only_where_it_really_is(dirs, leaf):
    path = "/".join([*dirs, leaf])
    kind = rn.classify(path)
    real = resolved(path)
    # What is not where its name says it is goes into the jail's inputs.
    if kind is not rn.Kind.CODE:
        assert real is not None and rn.classify(real) is kind, (path, real, kind)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=2),
    max_leaves=4)
_FIELDS = ["migrations", "jail", "media", "usrmgt", "outage", "why", "jail_inputs", "assumed",
           "basis", "a-future-field"]
_TYPES = {"why": dict, "jail_inputs": dict, "basis": dict, "assumed": str}


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=3),
       said_no=st.sets(st.sampled_from([rn.MIGRATIONS, rn.JAIL, rn.MEDIA, rn.USRMGT,
                                        rn.OUTAGE])))
def test_whatever_a_journal_records_of_the_decision_reads_as_this_versions_or_the_full(
        tmp_path_factory: Any, changes: dict[str, Any], said_no: set[str]) -> None:
    """A decision as a journal file holds it (Journal.load, then Needs.from_json,
    the one reader): each field of this version's type, else the full
    procedure.  Before: a `basis` that is no mapping reached confirm() (every
    rerun and postinst a traceback), a `jail` of 0 skipped the rebuild."""
    from ivle_maint.journal import Journal

    journal = Journal.open(tmp_path_factory.mktemp("j"), "1.0", "1.1", "both")
    written = rn.Needs(**{k: False for k in said_no}, why={rn.JAIL: "same"},
                       basis={"files": "x"}).to_json()
    journal.needs = {**written, **changes}
    journal.begin("stop-web")
    needs = rn.Needs.from_json(Journal.load(journal.path).needs or {})
    for name, value in vars(needs).items():
        kind = _TYPES.get(name, bool)
        assert isinstance(value, kind) and (kind is bool or all(
            isinstance(v, str) for v in (value.values() if kind is dict else [value]))), \
            (name, value)
    if all(isinstance(v, _TYPES.get(k, bool)) and (not isinstance(v, dict) or all(
            isinstance(x, str) for x in v.values())) for k, v in changes.items()) \
            and "a-future-field" not in changes:
        assert needs == rn.Needs(**{**written, **changes})  # as it was written
    else:
        assert needs == rn.Needs.full("the journal's record of the decision is not this "
                                      "version's")

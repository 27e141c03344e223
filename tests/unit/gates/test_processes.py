"""The decision of gates/processes over generated kernel facts.

Facts carry no name and no command line, so no name can sway it; what
is generated here is where a process is (root, cwd, program, open files,
in ivle-maint's mount namespace or another), whose it is (real and
effective uid) and whether it is ivle-maint or its caller.
"""

from __future__ import annotations

import os
import subprocess
import time

import psutil
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.gates import processes
from ivle_maint.gates.processes import Facts, JailTree, Verdict, decide

TOP = "/srv/ivle/jailmounts"
SRC = "/srv/ivle/jails"
USERS = {5001: "alice", 5002: "bob"}
TREE = JailTree(TOP, USERS, SRC, frozenset({"__base__", "__base_build__"}),
                {(64, 2): None, (64, 100): "alice"})  # fmt: skip
OTHERS = [0, 1, 33, 105, 1000, 4999, 5003, 65534]  # root, daemon, www-data, postgres, staff

component = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                    min_size=1, max_size=12).filter(lambda c: c not in (".", ".."))  # fmt: skip
logins = st.one_of(st.sampled_from(["alice", "bob", "carol", "__base__", "__base_build__"]),
                   component)  # fmt: skip
rest = st.lists(component, max_size=3).map("/".join)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A path in a jail, in the jail sources, the mounts directory itself, beside it, elsewhere."""
    where = draw(st.sampled_from(["jail", "src", "top", "sibling", "elsewhere"]))
    tail = draw(rest)
    if where == "jail":
        path = f"{TOP}/{draw(logins)}/{tail}"
    elif where == "src":
        path = f"{SRC}/{draw(logins)}/{tail}"
    elif where == "top":
        path = TOP
    elif where == "sibling":
        path = f"{TOP}2/{draw(logins)}/{tail}"
    else:
        path = "/" + "/".join(draw(st.lists(component, min_size=1, max_size=4)))
    return os.path.normpath(path)


kinds = st.sampled_from(["root", "cwd", "program", "open file"])
uids = st.one_of(st.sampled_from([*USERS, *OTHERS]), st.integers(0, 2**32 - 2))


@st.composite
def facts(draw: st.DrawFn) -> Facts:
    places = tuple(draw(st.lists(st.tuples(kinds, paths()), max_size=4)))
    other_ns = draw(st.booleans())
    idents = st.sampled_from([(64, 2), (64, 100), (64, 7), (65, 2)])
    identities = tuple(draw(st.lists(st.tuples(st.sampled_from(["root", "cwd"]), idents),
                                     max_size=3))) if other_ns else ()  # fmt: skip
    return Facts(draw(st.integers(2, 4_000_000)), draw(uids), draw(uids), places, other_ns,
                 identities, draw(st.booleans()))  # fmt: skip


def in_a_jail(f: Facts) -> bool:
    below = [p for _, p in f.places if p.startswith(TOP + "/")]
    return bool(below) or (f.other_ns and any(i in TREE.marks for _, i in f.identities))


def in_a_src_jail(f: Facts) -> bool:
    return any(p.startswith(SRC + "/") and p.split("/")[4] not in TREE.not_jails
               for _, p in f.places)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(facts(), st.booleans())
def test_only_a_student_process_in_a_jail_is_ever_to_be_signalled(f: Facts, ours: bool):
    protected = {f.pid: "ivle-maint or its caller"} if ours else {}
    verdict = decide(f, TREE, protected).verdict
    student = f.uid in USERS  # the real uid
    inside = in_a_jail(f) or (student and (in_a_src_jail(f) or f.other_userns))
    if not inside:
        assert verdict is Verdict.OUTSIDE
    elif ours:
        assert verdict is Verdict.PROTECTED
    else:
        assert verdict is (Verdict.STUDENT if student else Verdict.FOREIGN)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(OTHERS), uids, st.lists(st.tuples(kinds, paths())), st.booleans())
def test_a_process_of_no_ivle_user_is_never_stopped(uid: int, euid: int,
                                                    places: list[tuple[str, str]], userns: bool):
    verdict = decide(Facts(4242, uid, euid, tuple(places), userns, (), userns), TREE, {}).verdict
    assert verdict in (Verdict.OUTSIDE, Verdict.FOREIGN)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(USERS)), rest, kinds)
def test_the_mounts_directory_itself_and_a_sibling_are_no_jail(uid: int, tail: str, kind: str):
    for path in (TOP, f"{TOP}2/{tail}", f"{TOP}-old/alice/{tail}"):
        facts = Facts(4242, uid, uid, ((kind, os.path.normpath(path)),))
        assert decide(facts, TREE, {}).verdict is Verdict.OUTSIDE


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(USERS)), rest)
def test_another_mount_namespace_is_judged_by_identity_not_path(uid: int, tail: str):
    # Its paths are of its own making: /elsewhere, but its root is a jail's.
    facts = Facts(4242, uid, uid, (("root", f"/elsewhere/{tail}".rstrip("/")),), True,
                  (("root", (64, 2)),))  # fmt: skip
    decision = decide(facts, TREE, {})
    assert decision.verdict is Verdict.STUDENT and decision.jail == USERS[uid]
    same_in_our_ns = Facts(4242, uid, uid, facts.places)
    assert decide(same_in_our_ns, TREE, {}).verdict is Verdict.OUTSIDE


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(OTHERS), st.sampled_from(sorted(USERS)), paths(), kinds)
def test_a_students_effective_uid_alone_never_makes_a_process_a_students(
    uid: int, euid: int, path: str, kind: str
):
    """A root daemon working in a jail as the student (seteuid) is named, never stopped;
    a student's set-uid program (effective uid root) is the student's."""
    verdict = decide(Facts(4242, uid, euid, ((kind, path),)), TREE, {}).verdict
    assert verdict in (Verdict.OUTSIDE, Verdict.FOREIGN)
    setuid = decide(Facts(4242, euid, uid, ((kind, path),)), TREE, {}).verdict
    assert setuid in (Verdict.OUTSIDE, Verdict.STUDENT)


def test_a_warm_workers_callers_are_spared_as_its_own(monkeypatch):
    """A warm postinst worker (warm_worker.py) is no descendant of dpkg: the
    process it runs the postinst for, and that one's ancestors, are spared
    as the postinst's own callers would be; nobody else is."""
    monkeypatch.setattr(processes, "_ON_BEHALF_OF", [])
    caller = subprocess.Popen(["sh", "-c", "sleep 60; true"])
    try:
        deadline = time.monotonic() + 10
        while not (children := psutil.Process(caller.pid).children()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        postinst = children[0].pid  # the sleep: its parent, the shell, is a caller too
        assert postinst not in processes.protected()
        processes.on_behalf_of(postinst)
        spared = processes.protected()
        assert {postinst, caller.pid, os.getpid(), 1} <= set(spared)
    finally:
        caller.kill()
        caller.wait()

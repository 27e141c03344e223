"""dpkg's calls of IVLE's prerm and postinst when another package conflicts
with IVLE or with one of its dependencies, made by real dpkg (a private
root, apt's --auto-deconfigure) with generated package names and versions:
`prerm deconfigure in-favour NEW VERSION removing DEP VERSION`, `prerm
remove in-favour NEW VERSION`, and their unwinds when NEW's preinst fails
(`postinst abort-deconfigure ...`, `postinst abort-remove in-favour ...`).

IVLE's scripts are ivle-maint's copy-by-hand ones (scripts/ivle-hooks/,
which hand every call on), and dpkg is the oracle of what each form
carries.  Each call stands for nothing: exit 0, so dpkg goes on.  (The
gate: dpkg_calls.parse_call's ARG_COUNTS.)
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.private_dpkg import DPKG_ENV, PrivateRoot, build_deb, ivle_hooks
from support.upgrade_helpers import REPO

pytestmark = [pytest.mark.needs_root]

VERSIONS = st.from_regex(r"([1-9][0-9]{0,3}:)?[0-9][0-9a-z.+~]{0,30}(-[0-9a-z.+~]{1,12})?",
                         fullmatch=True)
NAMES = st.from_regex(r"[a-z0-9][a-z0-9+.-]{1,20}", fullmatch=True)


@settings(max_examples=12, deadline=None)
@given(dep=NAMES, dep_version=VERSIONS, new=NAMES, new_version=VERSIONS,
       conflicts_with_ivle=st.booleans(), new_fails=st.booleans())
def test_every_call_dpkg_makes_when_a_package_conflicts_is_taken(
        *, dep: str, dep_version: str, new: str, new_version: str, conflicts_with_ivle: bool,
        new_fails: bool) -> None:
    dep, new = f"dep-{dep}", f"new-{new}"
    with tempfile.TemporaryDirectory() as directory:
        top = Path(directory)
        log = top / "calls.log"
        scripts, env = ivle_hooks(top, REPO, log)
        root = PrivateRoot(top / "root")
        root.install(build_deb(top, dep, dep_version, {f"usr/share/{dep}/x": b"x"}), env=env)
        ivle = build_deb(top, "ivle", "1.0", {"usr/share/ivle/x": b"x"},
                         scripts={s: scripts[s] for s in ("prerm", "postinst")},
                         fields=f"Depends: {dep}\n")
        root.install(ivle, env=env)
        victim = "ivle" if conflicts_with_ivle else dep
        failing = {"preinst": '#!/bin/sh\n[ "$1" = install ] && exit 1\nexit 0\n'}
        deb = build_deb(top, new, new_version, {f"usr/share/{new}/x": b"x"},
                        fields=f"Conflicts: {victim}\nReplaces: {victim}\n",
                        scripts=failing if new_fails else {})
        done = subprocess.run(
            ["dpkg", f"--root={root.root}", "--force-script-chrootless", "--force-unsafe-io",
             "--log=/dev/null", "--auto-deconfigure", "-i", str(deb)],
            capture_output=True, text=True, check=False, env={**DPKG_ENV, **env})
        calls = log.read_text().splitlines() if log.exists() else []
        expect = [f"prerm remove in-favour {new} {new_version} -> 0"] if conflicts_with_ivle \
            else [f"prerm deconfigure in-favour {new} {new_version} removing {dep} "
                  f"{dep_version} -> 0"]
        if new_fails:
            expect.append(f"postinst abort-remove in-favour {new} {new_version} -> 0"
                          if conflicts_with_ivle else
                          f"postinst abort-deconfigure in-favour {new} {new_version} "
                          f"removing {dep} {dep_version} -> 0")
        assert [c for c in calls if " -> " in c] == expect, [*calls, done.stdout, done.stderr]
        status = subprocess.run(["dpkg-query", f"--root={root.root}", "-W", "-f=${Status}", new],
                                capture_output=True, text=True, check=False, env=DPKG_ENV)
        # dpkg went on: NEW installed (IVLE, deconfigured, waits for its dependency)
        assert status.stdout.endswith(" installed") is not new_fails, done.stdout + done.stderr

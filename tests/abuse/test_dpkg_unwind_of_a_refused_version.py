"""dpkg's unwind when IVLE's preinst refuses the new version (a version
dpkg takes but no journal or log can be named after: over 100 characters,
generated, with epochs and tildes): real dpkg in a private root, IVLE's
scripts as ivle-maint ships them for copying (scripts/ivle-hooks/).

The preinst refuses before anything stops (exit 2); then dpkg's unwind,
`NEW-postrm abort-upgrade OLD NEW` and `OLD-postinst abort-upgrade NEW`,
must succeed so that dpkg keeps OLD installed.  (The gate:
hooks.checked_call; the undoing calls' versions select journals and name
nothing.)
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

HUGE = st.from_regex(r"([1-9]{1,4}:)?1\.1[0-9a-z.+~]{100,200}(-[0-9a-z.+~]{1,12})?",
                     fullmatch=True)


@settings(max_examples=8, deadline=None)
@given(new=HUGE)
def test_dpkgs_unwind_of_a_version_the_preinst_refuses_keeps_the_old_version_installed(
        new: str) -> None:
    """Before: the abort calls refused the version as the preinst did (exit
    2): dpkg stopped its unwind ('error while cleaning up') and left IVLE
    half-installed, needing a reinstall of OLD before apt does anything."""
    with tempfile.TemporaryDirectory() as directory:
        top = Path(directory)
        log = top / "calls.log"
        scripts, env = ivle_hooks(top, REPO, log)
        root = PrivateRoot(top / "root")
        root.install(build_deb(top, "ivle", "1.0", {"usr/share/ivle/x": b"1.0"},
                               scripts=scripts), env=env)
        deb = build_deb(top, "ivle", new, {"usr/share/ivle/x": b"new"}, scripts=scripts)
        done = subprocess.run(
            ["dpkg", f"--root={root.root}", "--force-script-chrootless", "--force-unsafe-io",
             "--log=/dev/null", "-i", str(deb)],
            capture_output=True, text=True, check=False, env={**DPKG_ENV, **env})
        assert done.returncode == 1, done.stdout + done.stderr
        calls = [c for c in log.read_text().splitlines() if " -> " in c]
        assert calls[-3:] == [f"preinst upgrade 1.0 {new} -> 2",
                              f"postrm abort-upgrade 1.0 {new} -> 0",
                              f"postinst abort-upgrade {new} -> 0"], calls
        assert root.query("-W", "-f=${Status} ${Version}", "ivle") == \
            "install ok installed 1.0", done.stderr
        assert not list((top / "ivle-maint" / "state").glob("journal/*"))

"""dpkg's unwind when the old postrm's `upgrade` fails (and the new
postrm's `failed-upgrade` too), made by real dpkg on a serving sandbox
node: `OLD-preinst abort-upgrade NEW` runs while NEW's files are still on
disk; dpkg puts OLD's back only before `NEW-postrm abort-upgrade OLD`.

IVLE's scripts are ivle-maint's copy-by-hand ones (scripts/ivle-hooks/),
run by dpkg in a private root with the node's settings.  The web server
must not start while NEW's code is there (Apache would load it and serve
it on OLD's schema); it starts once OLD's files are back, and the site
then completes the upgrade again.  (The gate: dpkg_calls.FORMS.)
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.private_dpkg import DPKG_ENV, PrivateRoot, build_deb, ivle_hooks
from support.upgrade_helpers import REPO, at_version_1_0, cli

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

WEB = "apache2"


def _failing(script: str, action: str) -> str:
    """SCRIPT failing at ACTION after its ivle-maint line, as IVLE's own lines may."""
    return script.replace("\nexit 0\n", f'\n[ "$1" = {action} ] && exit 1\nexit 0\n')


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(new=st.sampled_from(["1.1", "1:1.0", "1.1~rc1+b2"]))
def test_the_web_server_starts_only_once_the_old_files_are_back(node_factory: Any,
                                                                 new: str) -> None:
    """Before: `preinst abort-upgrade` gave the site back at once, the web
    server started on NEW's files, and the later calls found nothing to undo."""
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    with tempfile.TemporaryDirectory() as directory:
        top = Path(directory)
        log = top / "calls.log"
        scripts, env = ivle_hooks(top, REPO, log)
        env = {**env, **node.env}
        root = PrivateRoot(top / "root")
        files = root.root / "usr/share/ivle/code"
        # Each call logs which release's files dpkg has on disk as it runs.
        seen = {name: text.replace("#!/bin/sh\n", f'#!/bin/sh\necho "files: $(cat {files})"'
                                   f' >>{log}\n', 1) for name, text in scripts.items()}
        old = {**seen, "postrm": _failing(seen["postrm"], "upgrade")}
        root.install(build_deb(top, "ivle", "1.0", {"usr/share/ivle/code": b"OLD"},
                               scripts=old), env=env)
        (top / "new").mkdir()
        deb = build_deb(top / "new", "ivle", new, {"usr/share/ivle/code": b"NEW"},
                        scripts={**seen, "postrm": _failing(seen["postrm"], "failed-upgrade")})
        done = subprocess.run(
            ["dpkg", f"--root={root.root}", "--force-script-chrootless", "--force-unsafe-io",
             "--log=/dev/null", "-i", str(deb)],
            capture_output=True, text=True, check=False, env={**DPKG_ENV, **env})
        assert done.returncode == 1, done.stdout + done.stderr
        text = log.read_text()
        assert root.query("-W", "-f=${Status} ${Version}", "ivle") == "install ok installed 1.0"
    # Every ivle-maint call with NEW's files on disk: nothing was started.
    calls = [call for call in text.split("files: ")[1:] if " -> " in call]
    assert [c.splitlines()[-1] for c in calls][-4:] == [
        f"preinst upgrade 1.0 {new} -> 0", f"preinst abort-upgrade {new} -> 0",
        f"postrm abort-upgrade 1.0 {new} -> 0", f"postinst abort-upgrade {new} -> 0"], text
    for call in calls:
        if call.startswith("NEW"):
            assert "start" not in call.replace("schema hold", ""), call
    abandon = calls[-2]
    assert abandon.startswith("OLD") and "abandoned 1.0 -> " in abandon, text
    assert node.service_running(WEB) and cli(node, "hold", "check").returncode == 0
    assert "nothing to do" in cli(node, "rerun").stderr

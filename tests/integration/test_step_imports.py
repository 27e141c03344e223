"""Loading IVLE's procedure loads everything its steps use.

A watcher (a sitecustomize.py put first on ivle-maint's PYTHONPATH) notes
every ivle_maint, psutil, psycopg2, sh or pglast module first imported once
a step has begun: under dpkg the postinst is a new process whose web
server is down from its start, so an import there is one more thing that
can fail (a broken python3-psutil) with the site down.  (sh and pglast are
loaded by upgrade.preload, not with the modules that use them: `db status`
and `plan` never load them.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.upgrade_helpers import at_version_1_0, cli, journal, unpack

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

WATCHER = '''\
import atexit
import os
import sys

WATCHED = ("ivle_maint", "psutil", "psycopg2", "sh", "pglast", "debian", "http", "chardet")
REPORT = os.environ["IVLE_TEST_LATE_IMPORTS"]
begun = []
reported = []


@atexit.register
def loaded():
    """What this process loaded of what only some runs need (once)."""
    if reported:
        return
    reported.append(True)
    with open(REPORT + ".loaded", "a", encoding="utf-8") as report:
        said = [m for m in ("debian.debfile", "http.client", "pglast") if m in sys.modules]
        report.write(f"{sys.argv[1:]}: {' '.join(said)}\\n")


_exit = os._exit


def exit_now(code):
    """dpkg's hooks end by os._exit (cli._end_now), which runs no atexit."""
    loaded()
    _exit(code)


os._exit = exit_now


class LateImports:
    """Notes (never blocks) a watched module first imported after a step began."""

    def find_spec(self, name, path=None, target=None):
        if begun and name.split(".")[0] in WATCHED and name not in sys.modules:
            with open(REPORT, "a", encoding="utf-8") as report:
                report.write(f"{name} (during {begun[-1]})\\n")
        return None


sys.meta_path.insert(0, LateImports())

from ivle_maint.journal import Journal  # noqa: E402

_begin = Journal.begin


def begin(self, name, *args, **kwargs):
    begun.append(name)
    return _begin(self, name, *args, **kwargs)


Journal.begin = begin
'''


def test_no_module_is_first_imported_once_a_step_has_begun(node_factory, tmp_path,
                                                           monkeypatch):
    node = at_version_1_0(node_factory(users=2, consoles=1, role="both"))
    watcher = tmp_path / "watcher"
    watcher.mkdir()
    (watcher / "sitecustomize.py").write_text(WATCHER)
    report: Path = tmp_path / "late-imports"
    monkeypatch.setenv("IVLE_TEST_LATE_IMPORTS", str(report))
    path = (str(watcher),)

    cli(node, "hook", "preinst", "upgrade", "1.0", "1.1", check=True, pythonpath=path)
    unpack(node, "1.1")
    cli(node, "hook", "--package-version", "1.1", "postinst", "configure", "1.0", check=True,
        pythonpath=path)

    assert journal(node)["state"] == "complete"
    late = report.read_text(encoding="utf-8") if report.exists() else ""
    assert late == "", f"first imported while a step ran:\n{late}"
    # The postinst starts with the web server down: it loads what its phase
    # uses (pglast for the migrations), not the preinst's DebFile (keeping
    # the old package) nor a cluster's http.client.
    runs = Path(f"{report}.loaded").read_text(encoding="utf-8").splitlines()
    preinst, postinst = (line.split(": ", 1)[1] for line in runs[-2:])
    assert "debian.debfile" in preinst.split() and "http.client" not in preinst.split()
    assert postinst.split() == ["pglast"], runs

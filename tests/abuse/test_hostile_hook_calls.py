"""dpkg's calls of the hooks with versions dpkg would never give (empty
where it gives one, no leading digit, an empty revision, too long to name
a file), generated over every form that acts, on a real serving node.

Each: exit 2, one error line naming the call, and nothing done: the site
serving, no journal, no log.  (The gate: hooks.checked_call, slot by slot
from dpkg_calls.VERSION_SLOTS, and versions.parse; its unit test, with
dpkg itself as the oracle: unit/test_hooks.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.dpkg_calls import VERSION_SLOTS
from support.abuse_helpers import error_lines
from support.upgrade_helpers import at_version_1_0, cli

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_postgres]

BAD = ["", "none", "-1", "1.0-", "1::2", "1." + "1" * 240]


@pytest.fixture
def site(node_factory: Any) -> Any:
    return at_version_1_0(node_factory(users=2, consoles=1, role="both"))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(form=st.sampled_from(sorted(VERSION_SLOTS)), data=st.data())
def test_a_version_dpkg_never_gives_is_refused_before_anything_stops(
        site: Any, form: tuple[str, str], data: Any) -> None:
    """`preinst upgrade '' 1.1` ran the before-phase (site down, a baseline
    "of ''" recorded, exit 0); a 240-character version failed at the log's
    name (exit 1, 'File name too long'); `--package-version ''` exit 1."""
    script, action = form
    slots = VERSION_SLOTS[form]
    bad_slot = data.draw(st.integers(0, len(slots)), label="bad slot (last: --package-version)")
    # A long version names nothing in a call that undoes (abort-upgrade): taken
    # there (test_dpkg_unwind_of_a_refused_version.py).
    bad = data.draw(st.sampled_from([b for b in BAD if not (b == "" and bad_slot < len(slots)
                                                            and slots[bad_slot])
                                     and not (len(b) > 100 and action == "abort-upgrade")]),
                    label="bad")
    args = ["1.0" if i == 0 else "1.1" for i in range(len(slots))]
    version = "1.1"
    if bad_slot < len(slots):
        args[bad_slot] = bad
    else:
        version = bad
    done = cli(site, "hook", "--package-version", version, script, action, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(error_lines(done)) == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert error_lines(done)[0].startswith(f"ivle-maint: error: {script} {action}: not a valid "
                                           "version: "), done.stderr
    assert site.service_running("apache2") and site.console_pids() and site.mounts()
    assert not list(site.state_dir.glob("journal/*"))
    assert not site.maint_log_dir.exists() or not list(site.maint_log_dir.iterdir())


@pytest.mark.parametrize("how", ["DPKG_MAINTSCRIPT_PACKAGE", "--package"])
@pytest.mark.parametrize("package", ["ivle x", "-W", "Ivle"])
def test_a_package_name_dpkg_never_gives_is_refused_before_anything_stops(
        site: Any, how: str, package: str) -> None:
    """The name goes to dpkg-query's argv, the journal and the printed
    `apt-get install PACKAGE=NEW`.  Before: the preinst ran (the site down)
    and wrote a journal the next load refused as damaged."""
    env = {"DPKG_MAINTSCRIPT_PACKAGE": package} if how != "--package" else {}
    option = [f"--package={package}"] if how == "--package" else []
    done = cli(site, "hook", *option, "preinst", "upgrade", "1.0", "1.1", extra_env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert error_lines(done) == [f"ivle-maint: error: preinst upgrade: {how} is no package "
                                 f"name: {package!r}"], done.stderr
    assert site.service_running("apache2") and site.console_pids() and site.mounts()
    assert not list(site.state_dir.glob("journal/*"))

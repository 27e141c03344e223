"""What holds each step of IVLE's procedure long enough for a signal to land
inside it (tests/abuse: Ctrl-C in any step, SIGKILL then a rollback)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ivle_sandbox.releases import NEW, OLD
from support.abuse_helpers import hold_migration_lock
from support.upgrade_helpers import set_setting, stubborn_console, unpack

# What holds each step long enough for Ctrl-C to land inside it: the
# stand-ins' delays, a held lock, a console that ignores SIGTERM, a slow
# migration; media-version waits for nothing, so a pause is put in it (a
# sitecustomize.py first on ivle-maint's PYTHONPATH, as test_step_imports).
BEFORE_STEPS = ("stop-web", "stop-consoles", "unmount-jails", "baseline")
AFTER_STEPS = ("migrate", "rebuild-jail", "remake-users", "restart-usrmgt", "media-version",
               "start-web")
STAND_IN = {"stop-web": "apache2", "rebuild-jail": "ivle-buildjail",
            "remake-users": "ivle-remakeuser", "restart-usrmgt": "ivle-usrmgt-server",
            "start-web": "apache2"}
PAUSED_MEDIA = """\
import time
from ivle_maint.steps import media_version
_change = media_version.change_media_version
def paused(*args, **kwargs):
    time.sleep(120)
    return _change(*args, **kwargs)
media_version.change_media_version = paused
"""


@contextmanager
def held_in(node: Any, step: str, tmp_path: Path) -> Iterator[tuple[str, ...]]:
    """STEP made to last (unpacking 1.1 for an after-phase step); yields the
    PYTHONPATH that ivle-maint needs for it; undone afterwards."""
    if step in AFTER_STEPS:
        slow = {**OLD, **NEW, "20100201-01.sql": "SELECT pg_sleep(120);\n" +
                NEW["20100201-01.sql"]}
        unpack(node, migrations=slow if step == "migrate" else None)
    pythonpath: tuple[str, ...] = ()
    stubborn = holder = None
    if step in STAND_IN:
        node.set_fakes(STAND_IN[step], delay=120)
    elif step == "stop-consoles":
        set_setting(node, "consoles", "term_timeout", 120)
        stubborn = stubborn_console(node)
    elif step == "unmount-jails":
        set_setting(node, "jails", "run_mountallusers", "true")
        node.set_fakes("ivle-mountallusers", delay=120)
    elif step == "baseline":
        holder = hold_migration_lock(node)
        set_setting(node, "database", "lock_timeout", 120)
    elif step == "media-version":
        (tmp_path / "sitecustomize.py").write_text(PAUSED_MEDIA)
        pythonpath = (str(tmp_path),)
    try:
        yield pythonpath
    finally:
        if step in STAND_IN:
            node.set_fakes(STAND_IN[step], delay=0)
        elif step == "stop-consoles":
            set_setting(node, "consoles", "term_timeout", 10)
        elif step == "unmount-jails":
            node.set_fakes("ivle-mountallusers", delay=0)
        elif step == "baseline":
            set_setting(node, "database", "lock_timeout", 600)  # the default
        elif step == "migrate":
            unpack(node)  # 1.1's own migrations
        if stubborn is not None:
            stubborn.kill()
            stubborn.wait()
        if holder is not None:
            holder.close()

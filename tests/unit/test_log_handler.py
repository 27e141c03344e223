"""The run's log handler: a log that cannot be written ends the log, never
the run, and prints no traceback (logging's own handler prints one per
record)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest

from ivle_maint.logfile import SafeFormatter, TolerantHandler


def test_a_log_on_a_full_disk_says_so_once_and_drops_the_rest(
        capsys: pytest.CaptureFixture[str]) -> None:
    stream = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115
    handler = TolerantHandler(stream, Path("/var/log/ivle-maint/x.log"))
    handler.setFormatter(SafeFormatter("%(message)s"))
    logger = logging.getLogger("ivle_maint.test_log_handler")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(5):
            logger.warning("step %d done", n)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err == ("ivle-maint: warning: log /var/log/ivle-maint/x.log: No space left on "
                   "device; the rest of this run is not logged\n")
    assert isinstance(handler.failed, OSError)
    with contextlib.suppress(OSError):  # the buffered rest: run_log suppresses it too
        stream.close()

"""A log file per run, with UTC timestamps, for the administrator to read later."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MaintError
from .safepaths import open_nofollow, safe_dir


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # typeshed's overloads


@contextmanager
def run_log(log_dir: Path, name: str) -> Iterator[Path]:
    """Log everything from the ivle_maint loggers to LOG_DIR/NAME-TIMESTAMP.log."""
    safe_dir(log_dir, 0o750, "[paths] log")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = log_dir / f"{name.replace('/', '_')}-{stamp}.log"
    try:
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    except OSError as exc:
        raise MaintError(f"{path}: {exc.strerror or exc}") from None
    # A stream on the descriptor just checked: the path is not opened again.
    stream = os.fdopen(fd, "a", encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_UTCFormatter("%(asctime)sZ %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("ivle_maint")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()
        stream.close()

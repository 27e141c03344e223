"""A log file per run, with UTC timestamps, for the administrator to read later."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # typeshed's overloads


@contextmanager
def run_log(log_dir: Path, name: str) -> Iterator[Path]:
    """Log everything from the ivle_maint loggers to LOG_DIR/NAME-TIMESTAMP.log."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = log_dir / f"{name.replace('/', '_')}-{stamp}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.close(fd)
    handler = logging.FileHandler(path, encoding="utf-8")
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

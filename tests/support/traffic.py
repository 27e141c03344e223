"""A client asking a site for a page at a steady rate, each answer recorded.

Open loop: the requests start on a fixed schedule, each in its own thread,
so a slow answer does not lower the rate (the latency a student sees is
not hidden by the client waiting).  An answer is good when it is a 200
whose body GOOD() accepts; anything else (another status, a connection
refused or reset, a timeout) is a failure, recorded with what was seen.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when the request began
    latency: float  # seconds to the whole answer (or to the failure)
    status: int | None  # None: no HTTP answer at all
    seen: str  # the failure's text, or "" for a good answer

    @property
    def ok(self) -> bool:
        return not self.seen


class Client:
    """GET PATH from 127.0.0.1:PORT RATE times a second until stop()."""

    def __init__(self, port: int, *, rate: float = 20.0, path: str = "/",
                 good: Callable[[bytes], bool] = lambda body: True,
                 timeout: float = 30.0) -> None:
        self.port, self.rate, self.path, self.good, self.timeout = port, rate, path, good, timeout
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._scheduler = threading.Thread(target=self._schedule, name="client", daemon=True)

    def __enter__(self) -> Client:
        self._scheduler.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        """Stop sending; every request sent is answered (or failed) before it returns."""
        self._stop.set()
        self._scheduler.join()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        with self._lock:
            return sorted(self.answers, key=lambda a: a.sent)

    def _schedule(self) -> None:
        interval, next_at = 1.0 / self.rate, time.monotonic()
        while not self._stop.is_set():
            worker = threading.Thread(target=self._one, args=(time.monotonic(),), daemon=True)
            worker.start()
            self._workers.append(worker)
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _one(self, sent: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        status, seen = None, ""
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            status, body = response.status, response.read()
            if status != 200:
                seen = f"HTTP {status}: {body[:80]!r}"
            elif not self.good(body):
                seen = f"HTTP 200 but not the page: {body[:80]!r}"
        except (OSError, http.client.HTTPException) as exc:
            seen = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        answer = Answer(sent, time.monotonic() - sent, status, seen)
        with self._lock:
            self.answers.append(answer)


def percentile(values: list[float], fraction: float) -> float:
    """The value FRACTION of VALUES are at or below (nearest rank); nan if none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))  # round: 0.99 * 100 is not 99
    return ordered[min(rank, len(ordered)) - 1]

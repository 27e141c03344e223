#!/usr/bin/python3
"""A client watching an IVLE site during an upgrade: one request every 100 ms.

    probe.py URL --old 1.0 --new 1.1 [--count N] [--interval 0.1] [--json FILE]

Asks URL for a page (a bounded count, stops early on SIGTERM or SIGINT)
and classifies every answer:

- old / new: a page of that version (its `ivle-version` meta tag) whose
  asset URL (`/media/VERSION/...`) the node serves too;
- maintenance: 503 with a Retry-After header;
- refused: the connection was refused (nothing listening);
- error: anything else: another 4xx/5xx (new code on the old schema answers
  500), a 503 without Retry-After, a timeout, a reset, a page of neither
  version, or a page whose asset the node does not serve.

Prints one line at the end, e.g.
`client probe: 412 requests: 180 old, 30 maintenance, 0 refused, 0 errors, 202 new; outage 3.1s`
(outage: from the last old page to the first new one), and with --json the
classified timeline (times from `start`, the probe's CLOCK_MONOTONIC,
which the nodes' journals share).  Only loopback URLs are accepted: the probe runs in
the test's own network namespace (ip netns exec).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import re
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass

CLASSES = ("old", "maintenance", "refused", "error", "new")
VERSION_RE = re.compile(r'<meta name="ivle-version" content="([^"]+)">')
ASSET_RE = re.compile(r'href="(/media/[^"]+)"')


@dataclass
class Answer:
    t: float
    what: str
    detail: str = ""


def get(host: str, port: int, path: str, timeout: float) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Cache-Control": "no-cache"})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def classify(host: str, port: int, path: str, old: str, new: str, *,
             timeout: float) -> Answer:
    now = time.monotonic()
    try:
        status, headers, body = get(host, port, path, timeout)
        if status == 503:
            if "retry-after" in headers:
                return Answer(now, "maintenance")
            return Answer(now, "error", "503 without Retry-After")
        if status != 200:
            return Answer(now, "error", f"HTTP {status}")
        version = VERSION_RE.search(body)
        asset = ASSET_RE.search(body)
        if not version or version.group(1) not in (old, new):
            return Answer(now, "error", f"page of no known version: {body[:80]!r}")
        if not asset:
            return Answer(now, "error", f"{version.group(1)} page without an asset URL")
        asset_status, asset_headers, _ = get(host, port, asset.group(1), timeout)
        if asset_status == 503 and "retry-after" in asset_headers:
            # The maintenance answer came up between page and asset: the
            # client sees it, as a refused asset counts as refused.
            return Answer(now, "maintenance", f"{version.group(1)} page, asset 503")
        if asset_status != 200:
            return Answer(now, "error", f"{version.group(1)} page: {asset.group(1)} "
                                        f"answers {asset_status}")
        return Answer(now, "old" if version.group(1) == old else "new")
    except ConnectionRefusedError:
        return Answer(now, "refused")
    except TimeoutError:
        return Answer(now, "error", "timeout")
    except (OSError, http.client.HTTPException) as exc:
        return Answer(now, "error", f"{type(exc).__name__}: {exc}")


def outage(answers: list[Answer]) -> float | None:
    """Seconds from the last old page to the first new page after it."""
    last_old = max((a.t for a in answers if a.what == "old"), default=None)
    if last_old is None:
        return None
    first_new = min((a.t for a in answers if a.what == "new" and a.t > last_old), default=None)
    return None if first_new is None else first_new - last_old


def summary(answers: list[Answer]) -> str:
    counts = {c: sum(1 for a in answers if a.what == c) for c in CLASSES}
    out = outage(answers)
    return (f"client probe: {len(answers)} requests: {counts['old']} old, "
            f"{counts['maintenance']} maintenance, {counts['refused']} refused, "
            f"{counts['error']} errors, {counts['new']} new; "
            f"outage {'n/a' if out is None else f'{out:.1f}s'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--old", required=True, help="the version before the upgrade")
    parser.add_argument("--new", required=True, help="the version after the upgrade")
    parser.add_argument("--count", type=int, default=3000, help="at most this many requests")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between requests")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--json", help="write the classified timeline to this file")
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    try:
        if not ipaddress.ip_address(url.hostname or "").is_loopback:
            raise ValueError
    except ValueError:
        parser.error(f"{args.url}: only loopback addresses (run in the test's network namespace)")
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    print("client probe: started", flush=True)  # the caller waits for this line
    answers: list[Answer] = []
    start = time.monotonic()
    while len(answers) < args.count and not stop:
        answers.append(classify(url.hostname or "", url.port or 80, url.path or "/", args.old,
                                args.new, timeout=args.timeout))
        next_at = start + len(answers) * args.interval
        while not stop and time.monotonic() < next_at:
            time.sleep(min(0.02, max(0.0, next_at - time.monotonic())))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"outage": outage(answers), "start": start,
                       "answers": [[a.t - start, a.what, a.detail] for a in answers]}, handle)
    print(summary(answers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

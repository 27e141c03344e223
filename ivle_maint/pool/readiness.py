"""Is IVLE really serving on this slave?  A real page, asked of its own web server.

The pool answer is only a file: Apache serves 'ready' whether IVLE works
or not.  So before a slave goes back into the balancer's pool (switch.ready:
`pool ready`, and a rolling upgrade after each slave), IVLE itself is
asked for a page through this slave's own web server ([pool] ready_url).
The page passes when it is

- HTTP 200,
- not ivle-maint's maintenance page (its header, gates/web.MAINTENANCE_HEADER),
- and, when ivle.conf sets [media] version, links a static file under
  that version (/+media/+VERSION/, media_mark) in its first MAX_BODY
  bytes: the old code (or a cache in front of it) shows another version.

A web server just started answers 503, or nothing, for a while: the page
is asked again every RETRY seconds until [pool] ready_timeout runs out.
Each GET is bounded whole by what is left of it (gates/web.fetch: a server
that trickles its answer is cut there), so the check ends at the timeout.
Failing, one line names the URL, how long it waited and the last thing seen.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass

from ..config import Settings
from ..errors import ConfigError, MaintError
from ..gates import clock
from ..gates.text import shown
from ..gates.web import TIMED_OUT, Fetched, Target, fetch, target

RETRY = 0.5  # seconds between two asks
ASK_MAX = 30.0  # seconds one GET may take, at most (IVLE's first page loads its code)
ASK_MIN = 0.05  # ... and at least, even at the very end of the wait
MAX_BODY = 256 * 1024  # bytes of the page looked at: IVLE's links are in its head
OK = 200
AGENT = "ivle-maint readiness"


@dataclass(frozen=True)
class Ready:
    """The page passed: how long after the start, its status, where."""

    seconds: float
    status: int
    url: str

    def __str__(self) -> str:
        return f"IVLE answered at {self.url} (HTTP {self.status}) after {self.seconds:.1f}s"


def ready_url(settings: Settings) -> tuple[str, Target]:
    """[pool] ready_url and what the URL gate makes of it; ConfigError (exit
    2) for one it refuses, or with what a GET would not send (a query, a
    fragment, a user name: asking another page than the one named)."""
    url = str(settings["pool"]["ready_url"])
    where = target(url)
    if where is None or _more_than_a_get_sends(url):
        raise ConfigError(f"[pool] ready_url {shown(url, 200)}: not a URL the readiness "
                          "check can ask (http or https, a host name or an IP address, a "
                          "port in range, a path with no space; no query, fragment or user)")
    return url, where


def _more_than_a_get_sends(url: str) -> bool:
    """A query, a fragment or a user: the GET would ask another page than named."""
    parts = urllib.parse.urlsplit(url)  # target() took it: it parses
    return bool(parts.query or parts.fragment or "@" in parts.netloc)


def media_mark(media_version: str) -> bytes:
    """How IVLE's pages link a static file under the media version (its
    URL pattern `+media/+VERSION/NS/PATH`): the version alone would be
    found in almost any page when it is short ('1')."""
    return f"/+media/+{media_version}/".encode()


def why_not(got: Fetched, media_version: str | None) -> str | None:
    """What keeps the answer GOT from passing, for a person; None: it passes."""
    if got.status is None:
        return f"no answer ({got.why})"
    if got.maintenance:
        return f"HTTP {got.status}, ivle-maint's maintenance page"
    if got.status != OK:
        return f"HTTP {got.status}"
    if media_version is not None and media_mark(media_version) not in got.body:
        return (f"the page does not carry media version {shown(media_version, 130)} "
                f"(in its first {MAX_BODY // 1024} KiB)")
    return None


def check(settings: Settings, media_version: str | None, *,
          timeout: float | None = None) -> Ready:
    """Ask [pool] ready_url until its page passes (see the module's
    docstring), for at most TIMEOUT seconds ([pool] ready_timeout);
    MaintError in one line otherwise, saying what was last seen."""
    url, where = ready_url(settings)
    limit = float(settings["pool"]["ready_timeout"]) if timeout is None else timeout
    start = clock.monotonic()
    seen: str | None = None  # the last thing seen worth telling
    while True:
        left = limit - (clock.monotonic() - start)
        bound = max(ASK_MIN, min(ASK_MAX, left))
        got = fetch(where, bound, MAX_BODY, AGENT)
        elapsed = clock.monotonic() - start
        why = why_not(got, media_version)
        if why is None and got.status is not None:
            return Ready(elapsed, got.status, url)
        if seen is not None and got.why == TIMED_OUT and bound < ASK_MAX and elapsed >= limit:
            # Given only what was left of the wait and cut at its end, this ask
            # saw the wait end, not the server: an earlier ask's answer is the news.
            if bound >= RETRY:  # a real wait, not a sliver: told too
                seen += f"; then no answer within the last {bound:.1f}s"
        else:
            seen = why
        if elapsed >= limit:
            raise MaintError(f"IVLE at {url} is not ready after {elapsed:.1f}s ([pool] "
                             f"ready_timeout {limit:g}s): {seen}")
        time.sleep(min(RETRY, limit - elapsed))

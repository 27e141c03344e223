"""Is a slave's web server really down?  One HTTP request to where it answers.

A slave's row says what its journal and its own commands did; a web
server started by hand (`/etc/init.d/apache2 start`) is not in it.  So
before migrating, the master asks each slave whose row says "down" at the
URL that slave recorded ([cluster] probe_url): one GET, the whole exchange
within [cluster] probe_timeout (gates/web.fetch).

- no connection (refused, unreachable, timed out): not serving;
- HTTP 503 (Service Unavailable): not serving; with the header
  X-IVLE-Maintenance it is ivle-maint's maintenance page
  ([web] during_upgrade = maintenance), said so in the text;
- any other HTTP answer: it serves, whatever its row says.

A loopback URL names the slave's own machine, so only a node on that same
machine (same hostname) can check it; from elsewhere it is skipped, and
the master says so once.

The URL is a row's, which anyone with IVLE's database login may write:
every probe and every check of one parses it with the URL gate
(gates/web.target()).  One that names no http(s) host and port the probe
can ask (a port out of range, an IPv6 literal left open or with a zone, a
host no DNS name can be, a control character) is not checkable, as no URL
is: never a traceback, never "down".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..gates.web import fetch, target  # the bounded GET and the URL gate

if TYPE_CHECKING:
    from .table import NodeRow

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "ip6-localhost")
NOT_SERVING_STATUS = 503


@dataclass(frozen=True)
class Answer:
    serving: bool
    text: str  # what was seen, for a person
    maintenance: bool = False  # ivle-maint's maintenance page answered


def ask(url: str, timeout: float) -> Answer:
    """One GET of URL: does an IVLE web server answer there?"""
    where = target(url)
    if where is None:
        return Answer(False, f"not an http(s) URL: {url}")
    # TIMEOUT bounds the whole exchange, not each read: a server at a row's
    # URL that sends a byte a second would hold the master's wait for ever.
    got = fetch(where, timeout)
    if got.status is None:
        return Answer(False, f"no answer at {url} ({got.why})")
    if got.status == NOT_SERVING_STATUS and got.maintenance:
        return Answer(False, f"{url} answers ivle-maint's maintenance page (503)", True)
    if got.status == NOT_SERVING_STATUS:
        return Answer(False, f"{url} answers 503 (maintenance)")
    return Answer(True, f"its web server answers at {url} (HTTP {got.status})")


def is_loopback(url: str) -> bool:
    where = target(url)
    host = where.host if where else ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def checkable(row: NodeRow, my_host: str) -> bool:
    """Can this node reach ROW's probe URL at all (one target() can ask)?"""
    url = row.probe_url or ""
    return target(url) is not None and (not is_loopback(url) or row.host == my_host)


def answering(rows: list[NodeRow], me: str, my_host: str, timeout: float
              ) -> list[tuple[NodeRow, str]]:
    """The other web nodes whose row says down but whose web server answers."""
    found = []
    for row in rows:
        if row.name == me or not row.has_web or row.serving is not None:
            continue
        if not checkable(row, my_host):
            continue
        answer = ask(row.probe_url or "", timeout)
        if answer.serving:
            found.append((row, answer.text))
    return found


def unchecked(rows: list[NodeRow], me: str, my_host: str) -> list[str]:
    """The web nodes this node cannot check (no URL, or loopback elsewhere)."""
    return [r.name for r in rows if r.name != me and r.has_web and not checkable(r, my_host)]


def in_maintenance(rows: list[NodeRow], my_host: str, timeout: float) -> set[str]:
    """Names of the web nodes that are down and answer ivle-maint's maintenance page."""
    return {row.name for row in rows
            if row.has_web and row.serving is None and checkable(row, my_host)
            and ask(row.probe_url or "", timeout).maintenance}

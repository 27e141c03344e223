"""Is a slave's web server really down?  One HTTP request to where it answers.

A slave's row says what its journal and its own commands did; a web
server started by hand (`/etc/init.d/apache2 start`) is not in it.  So
before migrating, the master asks each slave whose row says "down" at the
URL that slave recorded ([cluster] probe_url): one GET, the whole exchange
within [cluster] probe_timeout (gates/waits.SocketDeadline).

- no connection (refused, unreachable, timed out): not serving;
- HTTP 503 (Service Unavailable): not serving; with the header
  X-IVLE-Maintenance it is ivle-maint's maintenance page
  ([web] during_upgrade = maintenance), said so in the text;
- any other HTTP answer: it serves, whatever its row says.

A loopback URL names the slave's own machine, so only a node on that same
machine (same hostname) can check it; from elsewhere it is skipped, and
the master says so once.

The URL is a row's, which anyone with IVLE's database login may write:
every probe and every check of one parses it here (target()).  One that
names no http(s) host and port the probe can ask (a port out of range, an
IPv6 literal left open or with a zone, a host no DNS name can be, a
control character) is not checkable, as no URL is: never a traceback, never "down".
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from ..gates.waits import SocketDeadline

if TYPE_CHECKING:
    from .table import NodeRow

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "ip6-localhost")
NOT_SERVING_STATUS = 503
MAINTENANCE_HEADER = "X-IVLE-Maintenance"  # services/maintenance_page.py's answer
_UNSENDABLE = re.compile("[\x00-\x20\x7f]")  # http.client refuses these in a path
# A host name's labels once IDNA has made them ASCII (underscores too: glibc
# resolves them, and some sites name hosts so).
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")


@dataclass(frozen=True)
class Answer:
    serving: bool
    text: str  # what was seen, for a person
    maintenance: bool = False  # ivle-maint's maintenance page answered


def preload() -> ModuleType:
    """http.client, loaded on the first request, not with this module (it
    loads the email package: `plan` asks no web server).  An upgrade calls
    this before its first step (upgrade.preload)."""
    import http.client  # deferred on purpose, see above

    return http.client


@dataclass(frozen=True)
class Target:
    https: bool
    host: str
    port: int | None
    path: str


def target(url: str) -> Target | None:
    """What the probe asks at URL; None when it names no http(s) host and
    port the probe can ask (the one parse of a row's URL)."""
    client = preload()
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
        if parts.scheme not in ("http", "https") or not host or not host.isprintable() \
                or any(c.isspace() for c in host):
            return None
        if not _askable_host(host):
            return None
        client.HTTPConnection(host, port)  # its checks of both; it connects to nothing
        path = parts.path or "/"
        path.encode("ascii")  # the request line is ASCII, with no space or control
        if _UNSENDABLE.search(path):
            return None
    except (ValueError, client.HTTPException):  # UnicodeError, InvalidURL too
        return None
    return Target(parts.scheme == "https", host, port, path)


def _askable_host(host: str) -> bool:
    """An IP address with no zone, or a host name DNS can hold.  A zone
    (fe80::1%eth0) names an interface of the node that wrote the row, not
    of the node asking; anything else would go to the resolver as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        ascii_name = host.encode("idna")  # what the connection does with it
        return len(ascii_name) <= 253 and _HOST_NAME.fullmatch(ascii_name.decode()) is not None
    return not getattr(address, "scope_id", None) and "%" not in host


def ask(url: str, timeout: float) -> Answer:
    """One GET of URL: does an IVLE web server answer there?"""
    client = preload()
    where = target(url)
    if where is None:
        return Answer(False, f"not an http(s) URL: {url}")
    kind = client.HTTPSConnection if where.https else client.HTTPConnection
    conn = kind(where.host, where.port, timeout=timeout)
    # TIMEOUT bounds the whole exchange, not each read: a server at a row's
    # URL that sends a byte a second would hold the master's wait for ever.
    with SocketDeadline(timeout) as deadline:
        conn._create_connection = deadline.create_connection
        try:
            conn.request("GET", where.path, headers={"User-Agent": "ivle-maint probe"})
            response = conn.getresponse()
            status, maintenance = response.status, response.getheader(MAINTENANCE_HEADER)
            if deadline.expired:  # its headers cut short: no whole answer
                raise TimeoutError("timed out")
        except (OSError, client.HTTPException) as exc:
            why = "timed out" if deadline.expired or isinstance(exc, socket.timeout) else (
                exc.strerror if isinstance(exc, OSError) and exc.strerror
                else type(exc).__name__)
            return Answer(False, f"no answer at {url} ({why})")
        finally:
            conn.close()
    if status == NOT_SERVING_STATUS and maintenance:
        return Answer(False, f"{url} answers ivle-maint's maintenance page (503)", True)
    if status == NOT_SERVING_STATUS:
        return Answer(False, f"{url} answers 503 (maintenance)")
    return Answer(True, f"its web server answers at {url} (HTTP {status})")


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

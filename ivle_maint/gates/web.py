"""Asking a web server: one GET, its URL gated, the whole exchange bounded.

Rule: every HTTP request ivle-maint makes goes through fetch(), to what
target() made of a URL, and no URL is asked that target() refuses.

- The URL.  A row of the cluster table ([cluster] probe_url, which anyone
  with IVLE's database login may write) or a setting ([pool] ready_url)
  names it: target() takes only an http(s) URL naming a host and port the
  request can ask (an IP address with no zone, or a host name DNS can hold;
  a port in range; a path with no space or control character).  Anything
  else is None: never a traceback.
- The exchange.  The timeout bounds it whole (waits.SocketDeadline: the
  name lookup, the connection, the request, the status line, the headers
  and the body read), not each read: a server that sends a byte a second
  would otherwise hold the asker for ever.  The body is read up to a
  limit, never whole.

http.client is loaded on the first request, not with this module (it
loads the email package: `plan` asks no web server).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .waits import SocketDeadline

# The header of ivle-maint's own maintenance page (services/maintenance_page.py sends it).
MAINTENANCE_HEADER = "X-IVLE-Maintenance"
_UNSENDABLE = re.compile("[\x00-\x20\x7f]")  # http.client refuses these in a path
# A host name's labels once IDNA has made them ASCII (underscores too: glibc
# resolves them, and some sites name hosts so).
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")
_READ = 65536  # bytes asked of the connection at a time
TIMED_OUT = "timed out"  # Fetched.why of an exchange cut at its bound


def preload() -> ModuleType:
    """http.client, loaded on the first request, not with this module.  An
    upgrade calls this before its first step (upgrade.preload)."""
    import http.client  # deferred on purpose, see above

    return http.client


@dataclass(frozen=True)
class Target:
    https: bool
    host: str
    port: int | None
    path: str


def target(url: str) -> Target | None:
    """What a GET of URL asks; None when it names no http(s) host and port
    a request can ask (the one parse of a URL to be asked)."""
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
    (fe80::1%eth0) names an interface of the node that wrote the URL, not
    of the node asking; anything else would go to the resolver as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        ascii_name = host.encode("idna")  # what the connection does with it
        return len(ascii_name) <= 253 and _HOST_NAME.fullmatch(ascii_name.decode()) is not None
    return not getattr(address, "scope_id", None) and "%" not in host


@dataclass(frozen=True)
class Fetched:
    """What one GET saw: a whole answer (its status, whether it is
    ivle-maint's maintenance page, the start of its body) or none (why)."""

    status: int | None  # None: no whole answer
    maintenance: bool = False
    body: bytes = b""  # its first bytes, at most max_body
    why: str = ""  # no answer: why, for a person ("timed out", "Connection refused")


def fetch(where: Target, timeout: float, max_body: int = 0,
          agent: str = "ivle-maint probe") -> Fetched:
    """One GET of WHERE (what target() made of a URL), the whole exchange
    within TIMEOUT seconds, reading at most MAX_BODY bytes of the body."""
    client = preload()
    kind = client.HTTPSConnection if where.https else client.HTTPConnection
    conn = kind(where.host, where.port, timeout=timeout)
    with SocketDeadline(timeout) as deadline:
        conn._create_connection = deadline.create_connection
        try:
            conn.request("GET", where.path, headers={"User-Agent": agent})
            response = conn.getresponse()
            status = response.status
            maintenance = bool(response.getheader(MAINTENANCE_HEADER))
            body = _read(response, max_body)
            if deadline.expired:  # cut short (a shut socket reads as an end): no whole answer
                raise TimeoutError(TIMED_OUT)
        except (OSError, client.HTTPException) as exc:
            why = TIMED_OUT if deadline.expired or isinstance(exc, socket.timeout) else (
                exc.strerror if isinstance(exc, OSError) and exc.strerror
                else type(exc).__name__)
            return Fetched(None, why=why)
        finally:
            conn.close()
    return Fetched(status, maintenance, body)


def _read(response: Any, most: int) -> bytes:
    """The body's first MOST bytes (all of it, if shorter)."""
    chunks: list[bytes] = []
    size = 0
    while size < most:
        chunk = response.read(min(_READ, most - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)

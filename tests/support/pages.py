"""A web server standing in for IVLE behind a slave's Apache: Python's
http.server on 127.0.0.1, answering each GET with the next of its pages
(the last one again once they run out) and noting what was asked."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Page:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def ivle_page(media_version: str) -> bytes:
    """The head of an IVLE page: its static files under the media version."""
    return (f'<html><head><link rel="stylesheet" href="/+media/+{media_version}/'
            f'ivle.webapp.core/ivle.css"/></head><body>IVLE</body></html>\n').encode()


MAINTENANCE = Page(503, b"<html>down for an upgrade</html>\n",
                   (("X-IVLE-Maintenance", "1"), ("Retry-After", "60")))


@dataclass
class PageServer:
    pages: list[Page]
    port: int = 0
    asked: list[tuple[str, str]] = field(default_factory=list)  # (path, User-Agent)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def next_page(self, path: str, agent: str) -> Page:
        with self.lock:
            self.asked.append((path, agent))
            return self.pages.pop(0) if len(self.pages) > 1 else self.pages[0]


@contextlib.contextmanager
def serving(*pages: Page) -> Iterator[PageServer]:
    """A PageServer answering PAGES in turn, until the block ends."""
    site = PageServer(list(pages) or [Page()])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = site.next_page(self.path, self.headers.get("User-Agent", ""))
            self.send_response(page.status)
            for name, value in page.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(page.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(page.body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a reader that stops at its limit closes before the body is sent

    server = Server(("127.0.0.1", 0), Handler)
    site.port = int(server.server_address[1])
    # Its shutdown waits for the loop's next look: every 20 ms, not 0.5 s.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="pages",
                              daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

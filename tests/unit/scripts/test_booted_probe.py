"""The booted-node client probe's classification, against a loopback server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from booted import probe

PAGE = ('<meta name="ivle-version" content="{v}">'
        '<link rel="stylesheet" href="/media/{m}/ivle.css">')


class Site(http.server.BaseHTTPRequestHandler):
    """/PAGE-KIND answers as IVLE (or a broken IVLE) would; /media/1.1/ exists."""

    def do_GET(self) -> None:
        kind = self.path.strip("/")
        if self.path.startswith("/media/paused/"):  # maintenance came up after the page
            self.reply(503, "down for an upgrade", {"Retry-After": "30"})
        elif self.path.startswith("/media/"):
            self.reply(200 if self.path.startswith("/media/1.1/") else 404, "css")
        elif kind == "old":
            self.reply(200, PAGE.format(v="1.0", m="1.1"))
        elif kind == "new":
            self.reply(200, PAGE.format(v="1.1", m="1.1"))
        elif kind == "paused-asset":
            self.reply(200, PAGE.format(v="1.0", m="paused"))
        elif kind == "stale-media":
            self.reply(200, PAGE.format(v="1.1", m="1.0"))
        elif kind == "maintenance":
            self.reply(503, "down for an upgrade", {"Retry-After": "30"})
        elif kind == "bare-503":
            self.reply(503, "down")
        elif kind == "db-error":
            self.reply(500, "column theme does not exist")
        else:
            self.reply(200, "<p>some other site</p>")

    def reply(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("path", "expected"), [
    ("/old", "old"), ("/new", "new"), ("/maintenance", "maintenance"),
    ("/paused-asset", "maintenance"),
    ("/bare-503", "error"), ("/db-error", "error"), ("/stale-media", "error"),
    ("/other", "error"),
])
def test_classify(port, path, expected):
    assert probe.classify("127.0.0.1", port, path, "1.0", "1.1", timeout=5).what == expected


def test_refused():
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        free = sock.getsockname()[1]
        assert probe.classify("127.0.0.1", free, "/", "1.0", "1.1", timeout=5).what == "refused"


def test_summary_and_outage():
    answers = [probe.Answer(0.0, "old"), probe.Answer(0.1, "old"), probe.Answer(0.2, "refused"),
               probe.Answer(0.3, "maintenance"), probe.Answer(2.1, "new")]
    assert probe.summary(answers) == ("client probe: 5 requests: 2 old, 1 maintenance, "
                                      "1 refused, 0 errors, 1 new; outage 2.0s")


def test_refuses_other_than_loopback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["http://192.0.2.1/", "--old", "1.0", "--new", "1.1"])
    assert exit_info.value.code == 2
    assert "only loopback" in capsys.readouterr().err

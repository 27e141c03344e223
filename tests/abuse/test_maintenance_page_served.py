"""The maintenance page as a real Apache serves it from the generated configuration.

What a student's browser gets: the administrator's page (or ivle-maint's)
character for character, on every URL, 503, with a Retry-After that is
delay-seconds and the same figure as the page's reload.  Apache reads the
page as an expression (%{REQUEST_URI} is the request's URL), replaces
${NAME} from its environment and reads backslash escapes: none of that may
reach the page.

Needs Debian's apache2 binary: /usr/sbin/apache2, or the root of the
unpacked apache2-bin package (and its libraries) in
$IVLE_MAINT_TEST_APACHE_ROOT.
"""

from __future__ import annotations

import html.parser
import http.client
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.services import maintenance_page

ROOT = Path(os.environ.get("IVLE_MAINT_TEST_APACHE_ROOT", "/"))
APACHE = ROOT / "usr/sbin/apache2"
MODULES = ROOT / "usr/lib/apache2/modules"
# What Apache reads in a page: its expressions, its environment, escapes.
APACHE_WORDS = ["%{REQUEST_URI}", "%{HTTP_USER_AGENT}", "%{", "${HOME}", "${", "$1", "$",
                "\\", "\\n", "\\777", "\\x41", '"', "'", "\n", "\t", "\r", "&", "<", "}",
                "<script>", "<pre>", "// ", "\u00e9", "\u202e", "\U0001f600"]
DELAY_SECONDS = re.compile(r"[0-9]+")  # RFC 9110 10.2.3: Retry-After = HTTP-date / delay-seconds

pytestmark = pytest.mark.skipif(not APACHE.exists(), reason="needs apache2 (apt install "
                                "apache2-bin, or IVLE_MAINT_TEST_APACHE_ROOT)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """One Apache (-X: one process) serving the generated configuration."""

    def __init__(self, work: Path, conf: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "maintenance.conf").write_text(conf)
        self.port = _free_port()
        (work / "httpd.conf").write_text(
            f"ServerRoot {work}\nListen 127.0.0.1:{self.port}\nPidFile {work}/pid\n"
            f"ErrorLog {work}/error.log\nServerName localhost\nDocumentRoot {work}\n"
            f"LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n"
            f"LoadModule authz_core_module {MODULES}/mod_authz_core.so\n"
            f"LoadModule headers_module {MODULES}/mod_headers.so\n"
            f"LoadModule alias_module {MODULES}/mod_alias.so\n"
            f"Include {work}/maintenance.conf\n")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "SECRET_OF_APACHE": "leaked"}
        if str(ROOT) != "/":
            env["LD_LIBRARY_PATH"] = str(ROOT / "usr/lib/x86_64-linux-gnu")
        self.work = work
        self.process = subprocess.Popen([str(APACHE), "-X", "-f", str(work / "httpd.conf")],
                                        env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read() if self.process.stdout else b""
                log = (work / "error.log").read_text(errors="replace") \
                    if (work / "error.log").exists() else ""
                raise AssertionError(f"apache2 refused the configuration: {out!r} {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("apache2 did not listen")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers={"User-Agent": "<img src=x onerror=1>"})
            answer = connection.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[Served] = []

    def start(conf: str) -> Served:
        served = Served(tmp_path_factory.mktemp("apache"), conf)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def _checked_answer(served: Served, seconds: int) -> list[bytes]:
    """The body of each URL, after checking status and headers of each."""
    bodies = []
    for path in ("/", "/ivle/%7BREQUEST_URI%7D/<script>alert(1)</script>?a=%{x}",
                 "/ivle-maint-maintenance.conf"):
        status, headers, body = served.get(path)
        assert status == 503, path
        assert DELAY_SECONDS.fullmatch(headers["Retry-After"]) and \
            int(headers["Retry-After"]) == seconds
        assert headers["Cache-Control"] == "no-store"
        assert headers[maintenance_page.HEADER] == "1"
        assert not any(c in value for value in headers.values() for c in "\r\n")
        bodies.append(body)
    assert len(set(bodies)) == 1, "the page depends on the request"
    return bodies


pages = st.lists(st.one_of(st.sampled_from(APACHE_WORDS),
                           st.text(st.characters(blacklist_categories=("Cs",),
                                                 blacklist_characters="\x00"),
                                   max_size=40)),
                 min_size=1, max_size=30).map("".join)


@settings(deadline=None, max_examples=30,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(page=pages, seconds=st.integers(min_value=1, max_value=10 ** 6))
def test_an_administrators_page_is_served_as_written_on_every_url(
        serve: Any, tmp_path_factory: pytest.TempPathFactory, page: str, seconds: int) -> None:
    work = tmp_path_factory.mktemp("page")
    (work / "page.html").write_text(page, encoding="utf-8")
    (work / "maint.conf").write_text(f"[node]\nrole = slave\n[paths]\nstate = {work / 'state'}"
                                     f"\n[web]\nmaintenance_page = {work / 'page.html'}\n")
    try:
        text = maintenance_page.page_text(load_settings(str(work / "maint.conf")), seconds)
    except MaintError as exc:  # refused before anything stops (preflight): one line
        assert "\n" not in str(exc)
        assert page == "" or (" " not in page and re.match(r"/|[A-Za-z0-9+.-]+:", page)), exc
        return
    served = serve(maintenance_page.conf_text(seconds, text))
    body = _checked_answer(served, seconds)[0]
    # Apache labels it iso-8859-1: ASCII, each other character a reference.
    assert body == page.encode("ascii", "xmlcharrefreplace")


class _Reader(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refresh: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "meta" and ("http-equiv", "refresh") in attrs:
            self.refresh.append(dict(attrs)["content"] or "")


@settings(deadline=None, max_examples=25,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seconds=st.integers(min_value=1, max_value=10 ** 7))
def test_ivle_maints_page_reloads_when_retry_after_says(serve: Any, seconds: int) -> None:
    served = serve(maintenance_page.conf_text(seconds, maintenance_page.default_page(seconds)))
    body = _checked_answer(served, seconds)[0]
    reader = _Reader()
    reader.feed(body.decode("ascii"))
    assert reader.refresh == [str(seconds)]
    assert reader.tags == ["html", "head", "title", "meta", "body", "h1", "p"]
    assert maintenance_page.back_in(seconds) in body.decode("ascii")


def test_a_page_apache_would_read_as_an_expression_is_served_as_written(serve: Any) -> None:
    page = ('<p>Back at 5%{REQUEST_URI}, ${SECRET_OF_APACHE} $1 C:\\temp \\777</p>\n'
            '<pre>\n  one\n    two</pre><script>// a comment\nvar a = "\\n";</script>\n')
    served = serve(maintenance_page.conf_text(60, page))
    assert _checked_answer(served, 60)[0] == page.encode("ascii")

"""The readiness check before a slave goes back in the pool: a real web
server on loopback (tests/support/pages.py) stands in for IVLE behind the
slave's Apache; every answer it gives goes through the real bounded GET."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.config import Settings, load_settings
from ivle_maint.errors import ConfigError, MaintError
from ivle_maint.gates.web import fetch
from ivle_maint.pool import readiness
from support.pages import MAINTENANCE, Page, ivle_page, serving

VERSION = "2.1.r3"
MARK = readiness.media_mark(VERSION)  # /+media/+2.1.r3/
HANG_GUARD = 60  # seconds: far beyond every timeout here; never how fast


def settings_for(directory: Path, url: str, timeout: float = 10) -> Settings:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ivle-maint.conf"
    path.write_text(f'[node]\nrole = slave\n[pool]\nready_url = "{url}"\n'
                    f"ready_timeout = {timeout}\n")
    return load_settings(str(path))


def checked(settings: Settings, version: str | None = VERSION) -> readiness.Ready | MaintError:
    """readiness.check's result or error, run in a thread the test gives up
    on after HANG_GUARD seconds (then it fails as a hang)."""
    out: list[readiness.Ready | MaintError] = []

    def run() -> None:
        try:
            out.append(readiness.check(settings, version))
        except MaintError as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert out, "the readiness check still waits: not bounded"
    return out[0]


def failure(result: readiness.Ready | MaintError) -> str:
    assert isinstance(result, MaintError), f"passed: {result}"
    text = str(result)
    assert "\n" not in text and "Traceback" not in text
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_200_page_carrying_the_media_version_passes(tmp_path):
    with serving(Page(200, ivle_page(VERSION))) as site:
        url = site.url("/ivle/")
        result = checked(settings_for(tmp_path, url))
    assert isinstance(result, readiness.Ready), result
    assert (result.status, result.url) == (200, url)
    assert result.seconds >= 0 and f"IVLE answered at {url} (HTTP 200) after" in str(result)
    assert site.asked == [("/ivle/", readiness.AGENT)]  # the page named, asked once


def test_without_a_media_version_any_200_that_is_not_maintenance_passes(tmp_path):
    with serving(Page(200, b"no version here")) as site:
        result = checked(settings_for(tmp_path, site.url()), version=None)
    assert isinstance(result, readiness.Ready) and result.status == 200


def test_the_maintenance_page_then_a_good_page_passes_after(tmp_path):
    with serving(MAINTENANCE, MAINTENANCE, Page(200, ivle_page(VERSION))) as site:
        result = checked(settings_for(tmp_path, site.url()))
    assert isinstance(result, readiness.Ready), result
    assert len(site.asked) == 3  # asked again until the page passed


@pytest.mark.parametrize("page", [
    Page(200, ivle_page(VERSION), (("X-IVLE-Maintenance", "1"),)),
    MAINTENANCE,
], ids=["200", "503"])
def test_ivle_maints_maintenance_page_never_passes(tmp_path, page):
    with serving(page) as site:
        text = failure(checked(settings_for(tmp_path, site.url(), timeout=1)))
    assert f"IVLE at {site.url()} is not ready after" in text
    assert f"): HTTP {page.status}, ivle-maint's maintenance page" in text
    assert len(site.asked) >= 1


def test_a_200_without_the_version_fails_naming_it(tmp_path):
    with serving(Page(200, ivle_page("2.1"))) as site:  # the old code's page
        text = failure(checked(settings_for(tmp_path, site.url(), timeout=1)))
    assert text.startswith(f"IVLE at {site.url()} is not ready after ")
    assert (f"([pool] ready_timeout 1s): the page does not carry media version {VERSION} "
            "(in its first 256 KiB)") in text
    assert len(site.asked) >= 2  # asked again meanwhile, every RETRY seconds


KIB_256 = 256 * 1024  # the limit as documented, not as the module's constant says


@pytest.mark.parametrize(("where", "passes"), [
    (KIB_256 - len(MARK), True),  # its last byte the limit's last
    (KIB_256 - len(MARK) + 1, False),  # one byte beyond it
], ids=["within", "beyond"])
def test_the_version_is_looked_for_in_the_first_256_kib_only(tmp_path, where, passes):
    body = b"x" * where + MARK + b"y" * 1000
    with serving(Page(200, body)) as site:
        result = checked(settings_for(tmp_path, site.url(), timeout=10 if passes else 1))
    if passes:
        assert isinstance(result, readiness.Ready), result
    else:
        assert f"does not carry media version {VERSION}" in failure(result)


def test_nothing_listening_fails_within_the_timeout_in_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/"
    text = failure(checked(settings_for(tmp_path, url, timeout=1)))
    assert text.startswith(f"IVLE at {url} is not ready after ")
    assert text.endswith("([pool] ready_timeout 1s): no answer (Connection refused)")


# A web server that sends FIRST, then one more byte every TRICKLE seconds
# for ever, on every connection: each read gets something well within any
# timeout, so only a bound on the whole exchange ends a GET.
TRICKLE = 0.05
GOOD = (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + ivle_page(VERSION))


@contextlib.contextmanager
def trickling(first: bytes, whole: bytes = b"") -> Iterator[tuple[int, list[int]]]:
    """... or, given WHOLE, that answer at once on the first connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()
    accepted = [0]

    def answer(conn: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError), conn:
            if whole and number == 1:
                conn.sendall(whole)
                return
            conn.sendall(first)
            while not done.wait(TRICKLE):
                conn.sendall(b"X")

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted[0] += 1
            threading.Thread(target=answer, args=(conn, accepted[0]), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), accepted
    finally:
        done.set()
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("cut", [0, 20, len(GOOD)],
                         ids=["nothing", "in-the-headers", "in-the-body"])
def test_a_server_trickling_its_answer_is_bounded(tmp_path, cut):
    """The version arrives whole in the body's head (cut = len(GOOD)): the
    answer is still cut short, never taken as a page."""
    with trickling(GOOD[:cut]) as (port, accepted):
        url = f"http://127.0.0.1:{port}/"
        text = failure(checked(settings_for(tmp_path, url, timeout=1)))
    assert text.startswith(f"IVLE at {url} is not ready after ")
    assert text.endswith("no answer (timed out)")
    assert accepted[0] >= 1


def test_an_answer_seen_before_the_server_hung_is_what_the_error_tells(tmp_path):
    """The maintenance page, then a server that trickles for ever: the last
    ask was cut by the check's own end, so the error tells the page seen."""
    maintenance = (b"HTTP/1.0 503 Service Unavailable\r\nX-IVLE-Maintenance: 1\r\n"
                   b"Content-Length: 0\r\n\r\n")
    with trickling(b"", whole=maintenance) as (port, accepted):
        url = f"http://127.0.0.1:{port}/"
        text = failure(checked(settings_for(tmp_path, url, timeout=1.5)))
    assert accepted[0] >= 2
    assert "): HTTP 503, ivle-maint's maintenance page" in text


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/", "http://[::1/", "http://127.0.0.1:99999/", "http:///x",
    "http://127.0.0.1/a b", "http://127.0.0.1/?page=1", "http://127.0.0.1/#top",
    "http://user:secret@127.0.0.1/", "http://a;b/", "http://[fe80::1%25eth0]/",
])
def test_a_ready_url_the_gate_refuses_is_one_line_naming_the_setting(tmp_path, url):
    settings = settings_for(tmp_path, url)
    with pytest.raises(ConfigError) as caught:
        readiness.check(settings, VERSION)
    assert caught.value.exit_status == 2
    text = str(caught.value)
    assert text.startswith("[pool] ready_url ") and "\n" not in text


STATUSES = st.integers(101, 599) | st.just(200)
# Around the link, or the version alone (which is not the link), or neither.
BODIES = st.tuples(st.binary(max_size=200), st.booleans(), st.booleans(),
                   st.binary(max_size=200)).map(
    lambda parts: parts[0] + ((MARK if parts[1] else VERSION.encode()) if parts[2] else b"")
    + parts[3])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=STATUSES, body=BODIES)
def test_a_page_passes_iff_it_is_200_and_carries_the_version(tmp_path, status, body):
    """Judged on the page as the real GET reads it, and by the check itself:
    a page that passes is waited for as long as it takes (HANG_GUARD), one
    that cannot pass fails at the shortest ready_timeout, whatever it saw."""
    expected = status == 200 and MARK in body
    with serving(Page(status, body)) as site:
        where = readiness.ready_url(settings_for(tmp_path, site.url()))[1]
        judged = readiness.why_not(fetch(where, HANG_GUARD, readiness.MAX_BODY), VERSION)
        result = checked(settings_for(tmp_path, site.url(), timeout=10 if expected else 0.1))
    assert (judged is None) is expected, (status, body, judged)
    assert isinstance(result, readiness.Ready) is expected, (status, body, result)
    if not expected:
        assert judged == (f"HTTP {status}" if status != 200 else
                          f"the page does not carry media version {VERSION} (in its "
                          "first 256 KiB)")
        assert failure(result).startswith(f"IVLE at {site.url()} is not ready after ")

"""Ages for a person, who holds a node name, and the web server probe."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.cluster.admin import name_holder
from ivle_maint.cluster.ages import human_age
from ivle_maint.cluster.probe import Answer, answering, ask, is_loopback, target
from ivle_maint.cluster.table import NodeRow


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "never seen"), (-3.2, "just now"), (0, "just now"), (42, "42 s ago"),
    (200, "3 min ago"), (3 * 3600, "3 h ago"), (5 * 86400, "5 days ago"),
])
def test_human_age(seconds, text):
    assert human_age(seconds) == text


def row(name: str, **kw) -> NodeRow:
    base = dict(role="slave", host="h", instance="i1", version="1.0", serving=None,
                target=None, phase="idle", step=None, media=None, note=None)
    return NodeRow(name, **{**base, **kw})  # type: ignore[arg-type]


def test_the_machine_id_decides_who_holds_a_name():
    held = row("slave1", machine="m1", instance="i1")
    assert name_holder(held, {"machine": "m1", "instance": "other"}) is None  # state lost
    assert name_holder(held, {"machine": "m2", "instance": "i1"}) == "host h, machine m1"
    old = row("slave1", machine=None, instance="i1")  # written by an older ivle-maint
    assert name_holder(old, {"machine": "m2", "instance": "i1"}) is None
    assert name_holder(old, {"machine": "m2", "instance": "i2"}) == "host h, machine i1"


@pytest.fixture
def server() -> Iterator[tuple[int, list[int]]]:
    """A web server on loopback answering the status in codes[0]."""
    codes = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(codes[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], codes
    httpd.shutdown()
    httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_answer_is_serving_but_503_and_no_answer_are_not(server):
    port, codes = server
    url = f"http://127.0.0.1:{port}/"
    assert ask(url, 3).serving and "(HTTP 200)" in ask(url, 3).text
    codes[0] = 503
    assert not ask(url, 3).serving and "503" in ask(url, 3).text
    refused = ask(f"http://127.0.0.1:{free_port()}/", 3)
    assert not refused.serving and "no answer" in refused.text
    assert not ask("ftp://example/", 3).serving


def test_only_rows_saying_down_are_asked_and_loopback_only_from_their_host(server):
    port, _ = server
    url = f"http://127.0.0.1:{port}/"
    rows = [row("down-but-up", probe_url=url), row("serving", serving="1.0", probe_url=url),
            row("elsewhere", host="other", probe_url=url), row("master", role="master",
                                                               probe_url=url)]
    found = answering(rows, "master", "h", 3)
    assert [r.name for r, _ in found] == ["down-but-up"]
    assert is_loopback("http://localhost:8080/") and not is_loopback("http://slave1/")


# A server at a row's URL (anyone with IVLE's database login writes it) that
# sends its answer whole up to some byte, then one more byte every
# TRICKLE seconds for ever: each read of the probe gets something well
# within its timeout, so only a deadline for the whole exchange ends it.
TRICKLE = 0.05
ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nX-IVLE-Maintenance: 1\r\n"
          b"Content-Length: 0\r\n\r\n")


@contextmanager
def trickling(first: bytes) -> Iterator[int]:
    """A server on loopback sending FIRST, then a byte per TRICKLE, until the test ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(first)
                while not done.wait(TRICKLE):
                    conn.sendall(b"X")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        done.set()
        listener.close()
        thread.join(timeout=10)


def _asked(url: str) -> list[Answer]:
    answers: list[Answer] = []
    asking = threading.Thread(target=lambda: answers.append(ask(url, 0.5)), daemon=True)
    asking.start()
    asking.join(timeout=20)  # forty times the probe's timeout: the bound, never the speed
    return answers


@settings(max_examples=12, deadline=None)
@given(cut=st.integers(0, len(ANSWER) - 1))
def test_an_answer_trickled_from_any_byte_on_ends_at_the_probes_timeout(cut: int) -> None:
    with trickling(ANSWER[:cut]) as port:
        answers = _asked(f"http://127.0.0.1:{port}/")
    assert answers, "the probe still waits for a server that sends a byte at a time"
    assert not answers[0].serving and "timed out" in answers[0].text, answers[0]



ZONES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                              blacklist_characters="%/?#[]@"), min_size=1, max_size=8)


@settings(max_examples=300)
@given(address=st.ip_addresses(), zone=st.none() | ZONES, encoded=st.booleans())
def test_an_address_is_asked_only_without_a_zone(address, zone, encoded) -> None:
    # A zone names an interface of the node that wrote the row, whichever
    # way the URL spells its "%" (RFC 6874 writes it "%25").
    literal = str(address) + ("" if zone is None else ("%25" if encoded else "%") + zone)
    host = f"[{literal}]" if address.version == 6 else literal
    where = target(f"http://{host}:8080/")
    if zone is None:
        assert where is not None and where.host == str(address) and where.port == 8080
    else:
        assert where is None, host


@settings(max_examples=300)
@given(host=st.text(max_size=70))
def test_a_host_is_asked_only_as_an_address_or_a_dns_name(host: str) -> None:
    where = target(f"http://{host}/")  # never an exception, whatever the text
    if where is not None:
        name = where.host.encode("idna").decode()
        assert "%" not in name and len(name) <= 253
        assert all(c.isalnum() or c in "._-:" for c in name), where.host

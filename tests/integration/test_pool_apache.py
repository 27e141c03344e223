"""The pool answer as Debian's apache2 serves it from the generated
configuration (conf-available/ivle-maint-pool.conf): 200 and the answer
while ready, 404 while drained, never cached.  'ready' asks that same
Apache for IVLE's page first (the readiness check; a file here, carrying
ivle.conf's media version)."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from ivle_maint.config import load_settings
from ivle_maint.errors import MaintError
from ivle_maint.pool import answer, switch
from support.balancer import APACHE, apache
from support.pages import ivle_page

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.once,
    pytest.mark.skipif(not APACHE.exists(), reason="needs apache2 (apt install apache2-bin)"),
]


def get(port: int, path: str) -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Cache-Control"), response.read()
    finally:
        conn.close()


def test_apache_serves_ready_then_404_once_drained(tmp_path: Path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "ivle.conf").write_text("[media]\nversion = 1.1.r2\n")
    conf = tmp_path / "ivle-maint.conf"
    base = (f"[node]\nrole = slave\n[paths]\nstate = {tmp_path / 'state'}\n"
            f"ivle_conf_dir = {etc}\n[web]\napache_dir = {tmp_path / 'etc-apache2'}\n")
    conf.write_text(base)
    settings = load_settings(str(conf))
    answer.write_conf(settings)
    work = tmp_path / "apache"
    work.mkdir()
    # IVLE's page, served by the same Apache from its DocumentRoot.
    (work / "ivle.html").write_bytes(ivle_page("1.1.r2"))
    with apache(work, answer.conf_path(settings)) as port:
        conf.write_text(base + f"[pool]\nready_url = http://127.0.0.1:{port}/ivle.html\n"
                        "ready_timeout = 10\n")
        settings = load_settings(str(conf))
        assert get(port, answer.URL)[0] == 404  # no answer yet: drained
        switched = switch.ready(settings, "1:1.1-2")
        assert switched.ready is not None and switched.ready.status == 200
        assert get(port, answer.URL) == (200, "no-store", b"ready 1:1.1-2\n")
        switch.drain(settings)
        status, cache, _ = get(port, answer.URL)
        assert (status, cache) == (404, "no-store")
        (work / "ivle.html").write_bytes(ivle_page("1.1"))  # the old code's page
        conf.write_text(conf.read_text().replace("ready_timeout = 10", "ready_timeout = 0.5"))
        with pytest.raises(MaintError, match=r"does not carry media version 1\.1\.r2 "):
            switch.ready(load_settings(str(conf)), "1.2")
        assert get(port, answer.URL)[0] == 404  # still out of the pool
        (work / "ivle.html").write_bytes(ivle_page("1.1.r2"))
        switch.ready(settings, "1.2")
        assert get(port, answer.URL) == (200, "no-store", b"ready 1.2\n")
        assert get(port, answer.URL + "/x")[0] == 404  # the file, nothing below it

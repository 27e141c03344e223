"""The pool answer as Debian's apache2 serves it from the generated
configuration (conf-available/ivle-maint-pool.conf): 200 and the answer
while ready, 404 while drained, never cached."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from ivle_maint.config import load_settings
from ivle_maint.pool import answer, switch
from support.balancer import APACHE, apache

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
    conf = tmp_path / "ivle-maint.conf"
    conf.write_text(f"[node]\nrole = slave\n[paths]\nstate = {tmp_path / 'state'}\n"
                    f"[web]\napache_dir = {tmp_path / 'etc-apache2'}\n")
    settings = load_settings(str(conf))
    switch.ready(settings, "1:1.1-2")
    with apache(tmp_path / "apache", answer.conf_path(settings)) as port:
        assert get(port, answer.URL) == (200, "no-store", b"ready 1:1.1-2\n")
        switch.drain(settings)
        status, cache, _ = get(port, answer.URL)
        assert (status, cache) == (404, "no-store")
        switch.ready(settings, "1.2")
        assert get(port, answer.URL) == (200, "no-store", b"ready 1.2\n")
        assert get(port, answer.URL + "/x")[0] == 404  # the file, nothing below it

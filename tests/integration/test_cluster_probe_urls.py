"""A row's probe URL is the database's, which anyone with IVLE's database
login may write: every reader that asks a web server at it (`cluster
status`, `cluster forget`, the master's wait before migrating, a
rollback's checks) goes through probe.target.  A URL the probe cannot ask
(a port out of range, an IPv6 literal left open, a host label IDNA
refuses, a space or a character that is not ASCII in its path) is not
checkable, as no URL is: never a traceback, never taken for "down"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import probe, table
from ivle_maint.cluster.admin import seen_of
from support.migration_site import Site

REPO = Path(__file__).resolve().parents[2]

# (text, whether the probe can ask it): hosts that never reach a DNS lookup.
SCHEMES = st.sampled_from([("http", True), ("https", True), ("HTTP", True), ("ftp", False),
                           ("", False)])
HOSTS = st.sampled_from([("127.0.0.1", True), ("localhost", True), ("[::1]", True),
                         ("a" * 64, False), ("a..b", False), ("\u00e9..b", False),
                         ("[::1", False), ("[fe80::1%25eth0]", False), ("[fe80::1%eth0]", False),
                         ("127.0.0.1%lo", False), ("a;b", False), ("", False),
                         ("h\x01", False), ("127.0.0.1 x", False)])
PORTS = st.sampled_from([("", True), (":", True), (":1", True), (":99999", False),
                         (":abc", False), (":-1", False), (":1:2", False)])
PATHS = st.text(st.sampled_from("/a?#% \u00e9\x7f\x1b"), max_size=6)


def _row(name: str, url: str, serving: str | None) -> dict[str, Any]:
    return {"name": name, "role": "slave", "host": table.hostname(), "instance": "i",
            "version": "1.0", "serving": serving, "phase": "idle", "note": "n",
            "probe_url": url}


def _askable(path: str) -> bool:
    sent = path.split("?", 1)[0].split("#", 1)[0]
    return sent.isascii() and not any(c <= " " or c == "\x7f" for c in sent)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scheme=SCHEMES, host=HOSTS, port=PORTS, path=PATHS)
def test_a_probe_url_the_probe_cannot_ask_is_not_checkable_never_a_traceback(
        site: Site, scheme: tuple[str, bool], host: tuple[str, bool],
        port: tuple[str, bool], path: str) -> None:
    url = f"{scheme[0]}://{host[0]}{port[0]}/{path}"
    askable = scheme[1] and host[1] and port[1] and _askable("/" + path)
    conn = site.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {table.NODES}")
        table.upsert(conn, _row("down", url, None))
        table.upsert(conn, _row("up", url, "1.0"))
        rows = table.nodes(conn)
    finally:
        conn.close()
    here = table.hostname()
    probe.in_maintenance(rows, here, 0.5)
    probe.answering(rows, "testnode", here, 0.5)
    blind = probe.unchecked(rows, "testnode", here)
    answer = probe.ask(url, 0.5)
    seen = [seen_of(site.settings(), row) for row in rows]
    assert (blind == []) == askable, (url, blind)
    if not askable:
        assert not answer.serving and answer.text.startswith("not an http(s) URL"), answer
        assert all(s.answers is None for s in seen), seen


def test_cluster_status_and_forget_say_one_line_whatever_a_rows_url(site: Site) -> None:
    conn = site.connect()
    try:
        table.ensure(conn)
        table.upsert(conn, _row("down", "http://h:99999/", None))
        table.upsert(conn, _row("up", "http://127.0.0.1:1/\u00e9", "1.0"))
    finally:
        conn.close()
    config = str(site.root / "etc" / "ivle-maint.conf")
    env = {k: v for k, v in os.environ.items() if k != "IVLE_MAINT_CONF"}
    for args in (("cluster", "status", "--expect", "1.0"), ("cluster", "forget", "down")):
        done = subprocess.run([sys.executable, "-m", "ivle_maint", "--config", config, *args],
                              env=env, cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode in (0, 1), done.stderr
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr, \
            done.stderr

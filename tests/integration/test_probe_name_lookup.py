"""A row's probe URL names a host the database chose: its name lookup is
asked within the probe's timeout, as the rest of the exchange is.  The
resolver's own timeouts (5 s a try, per server, per address family, here
30 s) would hold the master's wait, `cluster status` and a rollback's
checks far past [cluster] probe_timeout.

Real glibc resolver, real DNS server that reads every query and answers
none, in a private mount namespace whose /etc/resolv.conf names it."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The resolver and http.client: no library of ours (once: Debian's suite).
pytestmark = [pytest.mark.needs_root, pytest.mark.once]

REPO = Path(__file__).resolve().parents[2]
SILENT_DNS = "127.77.0.1"  # a loopback address of its own: port 53 free there


@contextmanager
def silent_dns() -> Iterator[list[bytes]]:
    """A DNS server on SILENT_DNS:53 that reads every query and answers none."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((SILENT_DNS, 53))
    sock.settimeout(0.05)  # so that the reader sees the test end
    queries: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            with suppress(TimeoutError):
                queries.append(sock.recv(4096))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield queries
    finally:
        done.set()
        reader.join(timeout=10)
        sock.close()


# The probe as the cluster's readers call it, in its own mount namespace
# with /etc/resolv.conf naming the silent server (30 s a try, one try).
ASK = textwrap.dedent("""\
    import subprocess, sys
    subprocess.run(["mount", "--bind", sys.argv[1], "/etc/resolv.conf"], check=True)
    from ivle_maint.cluster import probe
    answer = probe.ask(sys.argv[2], 0.5)
    print(answer.serving, answer.text)
""")

LABELS = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=1,
                 max_size=12).filter(lambda label: not label.startswith("-")
                                     and not label.endswith("-"))


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(label=LABELS, port=st.sampled_from(["", ":80", ":8080"]))
def test_a_host_whose_lookup_never_ends_is_no_answer_within_the_probes_timeout(
        tmp_path_factory: pytest.TempPathFactory, label: str, port: str) -> None:
    resolv = tmp_path_factory.mktemp("resolv") / "resolv.conf"
    resolv.write_text(f"nameserver {SILENT_DNS}\noptions timeout:30 attempts:1\n")
    url = f"http://{label}.ivle-maint-probe.test{port}/"
    with silent_dns() as queries:
        try:
            done = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", ASK,
                 str(resolv), url],
                cwd=REPO, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)},
                capture_output=True, text=True, check=False,
                timeout=20)  # forty times the probe's: the bound
        except subprocess.TimeoutExpired:
            pytest.fail(f"the probe of {url} still waits for the name lookup")
    assert done.returncode == 0, done.stderr
    assert queries, "the resolver never asked the silent server: the test proves nothing"
    assert done.stdout.startswith(f"False no answer at {url} (timed out"), done.stdout

"""A sandbox cluster's slaves behind a real HAProxy, as a site runs a roll.

HAProxy (support/balancer.haproxy) checks each slave's stand-in Apache at
/.ivle-maint/pool with `http-check disable-on-404`; each slave is set up
as an administrator would: [pool] balancer = haproxy with HAProxy's stats
socket, backend and its server's name, `pool drain` (which writes the
Apache conf), the conf enabled (a2enconf's link in conf-enabled), then
`pool ready`: both slaves UP before the roll begins.  ServerWatch keeps
looking at HAProxy's view of the servers while the roll runs.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ivle_sandbox.cluster import Cluster, node_name
from ivle_sandbox.node import Node
from support.balancer import BACKEND, UP, HAProxy, haproxy
from support.roll_helpers import enable_pool_answer
from support.upgrade_helpers import cli, set_setting


def join_haproxy(slave: Node, site: HAProxy, version: str) -> None:
    """SLAVE's [pool] settings for SITE, its conf enabled, and it in the pool."""
    for key, value in (("balancer", "haproxy"), ("haproxy_socket", site.socket),
                       ("backend", BACKEND), ("server", node_name(slave)),
                       ("drain_timeout", 20)):
        set_setting(slave, "pool", key, value)
    enable_pool_answer(slave)
    cli(slave, "pool", "ready", "--version", version, check=True)


@contextlib.contextmanager
def behind_haproxy(cluster: Cluster, directory: Path, version: str) -> Iterator[HAProxy]:
    """HAProxy in front of every slave of CLUSTER, each in its pool at VERSION."""
    servers = {node_name(s): s.web_port for s in cluster.slaves}
    with haproxy(directory, servers) as site:
        for slave in cluster.slaves:
            join_haproxy(slave, site, version)
        states = site.states()
        assert all(states[name] == (UP, 0) for name in servers), states
        yield site


@dataclass
class ServerWatch:
    """HAProxy's view of its servers, looked at every INTERVAL seconds until stopped."""

    site: HAProxy
    interval: float = 0.02
    looks: list[tuple[float, dict[str, tuple[int, int]]]] = field(default_factory=list)
    failed_looks: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ServerWatch:
        self._thread = threading.Thread(target=self._watch, name="server watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.looks.append((time.monotonic(), self.site.states()))
            except (OSError, IndexError, ValueError) as exc:
                self.failed_looks.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    @staticmethod
    def taking_sessions(states: dict[str, tuple[int, int]]) -> list[str]:
        """The servers UP and not drained or in maintenance by hand."""
        return [name for name, (op, admin) in states.items() if op == UP and admin == 0]

    def none_up(self) -> list[tuple[float, dict[str, tuple[int, int]]]]:
        """The looks that found no server taking new sessions."""
        return [(t, s) for t, s in self.looks if not self.taking_sessions(s)]

    def out_seconds(self, server: str) -> float:
        """How long HAProxy had SERVER taking no new sessions, look to look."""
        return sum(later - t for (t, states), (later, _) in itertools.pairwise(self.looks)
                   if server in states and server not in self.taking_sessions(states))

    def seen(self, server: str) -> set[int]:
        """Every srv_op_state SERVER was seen in."""
        return {s[server][0] for _, s in self.looks if server in s}

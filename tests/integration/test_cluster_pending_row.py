"""The final row a run could not write (the database was down) is kept in
[paths] state/cluster-row.pending.json and written by the next ivle-maint
that reaches the database (Presence.connection).  That file survives runs
and may be damaged: whatever it holds, the next connection works, and
only a row of this node, as a run writes one, reaches the table.  Before,
a file holding a JSON list or an object without a name made every cluster
command and wait a traceback (AttributeError, KeyError) for good."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import table
from ivle_maint.cluster.presence import NODE_ID_FILE, PENDING_ROW, Presence, node_id
from support.migration_site import Site

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=2),
    max_leaves=5)


def _row(name: str) -> dict[str, Any]:
    return {"name": name, "role": "master", "host": "h", "instance": "i", "version": "1.0",
            "serving": None, "target": None, "phase": "idle", "step": None, "media": None,
            "note": "kept", "mounts": None, "consoles": None, "machine": None,
            "probe_url": None, "runner": None, "rollback": None}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=_JSON | st.builds(lambda name, key, value: {**_row(name), key: value},
                              st.sampled_from(["testnode", "another", ""]),
                              st.sampled_from(["name", "phase", "mounts", "role", "extra"]),
                              _JSON))
def test_whatever_the_pending_row_holds_the_next_connection_works(site: Site,
                                                                   kept: Any) -> None:
    settings_ = site.settings()
    state = settings_.path_of("state")
    state.mkdir(parents=True, exist_ok=True)
    (state / PENDING_ROW).write_text(json.dumps(kept))
    conn = site.connect()
    try:
        table.ensure(conn)
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {table.NODES}")
    finally:
        conn.close()
    presence = Presence(settings_, site.reporter)
    try:
        names = {r.name for r in presence.query(table.nodes)}
    finally:
        presence.close()
    assert names <= {"testnode"}, names  # this node's row, or none


def test_a_pending_row_as_a_run_keeps_it_is_written_and_removed(site: Site) -> None:
    settings_ = site.settings()
    state = settings_.path_of("state")
    state.mkdir(parents=True, exist_ok=True)
    (state / PENDING_ROW).write_text(json.dumps({**_row("testnode"), "mounts": 0,
                                                 "consoles": 0, "phase": "failed",
                                                 "target": "1.1", "step": "migrate"}))
    presence = Presence(settings_, site.reporter)
    try:
        rows = {r.name: r for r in presence.query(table.nodes)}
    finally:
        presence.close()
    assert rows["testnode"].phase == "failed" and rows["testnode"].note == "kept"
    assert not (state / PENDING_ROW).exists()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=st.binary(max_size=40) | st.sampled_from([b"", b"\n", b"abc\n", b"\xff" * 32,
                                                      b"0" * 31 + b"\n", b"A" * 32]))
def test_whatever_the_node_id_file_holds_the_node_has_an_id(site: Site, kept: bytes) -> None:
    """[paths] state/node-id tells two nodes of one name apart (a row's
    instance).  Before: bytes that are not UTF-8 made every cluster command
    of the node a UnicodeDecodeError traceback, and an empty file an empty id
    that every node with one shares."""
    settings_ = site.settings()
    state = settings_.path_of("state")
    state.mkdir(parents=True, exist_ok=True)
    (state / NODE_ID_FILE).write_bytes(kept)
    first = node_id(settings_)
    assert re.fullmatch("[0-9a-f]{32}", first), first
    assert node_id(settings_) == first  # kept: the same id on the next run

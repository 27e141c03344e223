"""Rows other nodes (or a person) wrote in ivle_maint_nodes, generated with
one field no ivle-maint writes, read back through table.nodes from a real
PostgreSQL: every such row is refused at that one gate and taken
conservatively by every decision (a node that may serve old code, may be a
master, may hold jails), with the reason and the fix in one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint.cluster import table, trust, waits
from ivle_maint.config import load_settings
from ivle_maint.rollback import checks
from ivle_maint.rollback.point import RestorePoint
from ivle_sandbox import schema

pytestmark = [pytest.mark.needs_postgres]

DB = "ivle_row_gate"
GOOD = {"name": "web1", "role": "slave", "host": "web1", "instance": "i", "version": "1.0",
        "serving": None, "target": "1.1", "phase": "unpack", "mounts": 0, "consoles": 0}

BAD = st.one_of(
    st.tuples(st.just("role"), st.sampled_from(["Master", "SLAVE", " slave", "", "master ",
                                                 "web", "Both", "slave\n"])),
    st.tuples(st.sampled_from(["version", "serving", "target"]),
              st.sampled_from(["1.0 ", "", "one", "1.0\n", "_1", "1:", "-1", "1.0\x1b[2J"])),
    st.tuples(st.just("phase"), st.sampled_from(["Idle", "done", "", "unpacking", "after\n"])),
    st.tuples(st.sampled_from(["mounts", "consoles"]), st.integers(-2**31, -1)),
    st.tuples(st.just("name"), st.sampled_from(["web 1", "web1\n", "\x1b[31mweb1", "",
                                                 "a" * 300, "web\u200b1"])),
)


@pytest.fixture(scope="module")
def conn(postgres: Any) -> Iterator[Any]:
    schema.create_database(postgres, DB)
    c = postgres.connect(DB, postgres.ivle_user)
    table.ensure(c)
    try:
        yield c
    finally:
        c.close()
        schema.drop_database(postgres, DB)


def rows_with(conn: Any, row: dict[str, Any]) -> list[table.NodeRow]:
    with conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {table.NODES}")
        cur.execute(f"INSERT INTO {table.NODES} ({', '.join(row)}) VALUES "
                    f"({', '.join(['%s'] * len(row))})", list(row.values()))
    return table.nodes(conn)


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A master's settings (node 'me'), as the rollback's check reads them."""
    path = tmp_path_factory.mktemp("row-gate") / "maint.conf"
    path.write_text(f"[node]\nrole = master\nname = me\n[paths]\nstate = {path.parent}\n")
    return load_settings(str(path))


POINT = RestorePoint(Path("/nonexistent"), "1.0->1.1@ab", "1.0", "1.1", "master")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=BAD, serving=st.sampled_from([None, "1.0"]))
def test_a_row_with_a_value_no_ivle_maint_writes_is_taken_conservatively(
        conn: Any, master: Any, bad: tuple[str, Any], serving: str | None) -> None:
    field, value = bad
    row = {**GOOD, "serving": serving, field: value}
    (read,) = rows_with(conn, row)
    why = getattr(read, "invalid", None)
    assert why and field in why, (row, why)  # refused at the gate, the field named
    assert "ivle-maint cluster" in why  # and how to fix it
    assert "\n" not in why and "\x1b" not in why
    assert waits.describe(read) == why  # what a wait's timeout names
    # Every decision takes it as a web node that may serve old code...
    assert waits.serving_old([read], "master", "1.1") == [read], row
    assert waits.serving_old([read], "master", "0.9", rollback=True) == [read], row
    # ...that may still hold jails...
    assert waits.jails_held([read], "master") == [read], row
    # ...never as a master finished with its steps.
    assert not waits.master_finished(read, "1.0") and not waits.master_finished(read, "1.1")
    # ...and a full rollback's check of the slaves never passes over it
    # (before, only a row whose role read exactly 'slave' was looked at).
    wrong, _ = checks._slaves_wrong(conn, master, POINT)
    assert wrong == [(read.name, why)], row
    if field == "role":  # a role no ivle-maint writes may be a master's
        assert trust.second_master([read], "me", "master"), row


def test_the_rows_ivle_maint_writes_pass_the_gate_unchanged(conn: Any) -> None:
    for row in ({**GOOD}, {**GOOD, "role": "master", "phase": "idle", "target": None,
                           "mounts": None, "consoles": None, "serving": "1:1.0~rc1+dfsg-2"},
                {**GOOD, "role": "both", "phase": "waiting", "name": "node-1.example.org"}):
        (read,) = rows_with(conn, row)
        assert getattr(read, "invalid", None) is None, read
        assert (read.name, read.role, read.serving, read.mounts) == \
            (row["name"], row["role"], row["serving"], row["mounts"])

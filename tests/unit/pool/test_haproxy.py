"""HAProxy's `show servers state` answer, parsed: HAProxy's own answers
give the state it meant; anything else is one line naming the socket."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivle_maint.config import load_settings
from ivle_maint.errors import ConfigError, MaintError
from ivle_maint.pool import haproxy
from ivle_maint.pool.haproxy import DRAIN, DRAINED, MAINT, NOLB, UP, ServerState, parse

SOCK = "/run/haproxy/admin.sock"
# HAProxy 2.6.12's answer (Debian bookworm), s1 just turned NOLB by a 404.
HEADER = ("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
          "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
          "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
          "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr "
          "srv_agent_addr srv_agent_port")
ROW = "3 ivle {id} {name} 127.0.0.1 {op} {admin} 1 1 0 16 4 4 6 0 0 0 - 18932 - 0 0 - - 0"
REAL = f"1\n{HEADER}\n{ROW.format(id=1, name='s1', op=3, admin=0)}\n\n".encode()


def answer(rows: list[tuple[str, int, int]], backend: str = "ivle") -> bytes:
    body = "".join(ROW.format(id=i, name=name, op=op, admin=admin).replace(" ivle ",
                                                                          f" {backend} ") + "\n"
                   for i, (name, op, admin) in enumerate(rows, start=1))
    return f"1\n{HEADER}\n{body}\n".encode()


def test_haproxys_own_answer():
    state = parse(REAL, "ivle", "s1", SOCK)
    assert state == ServerState("ivle", "s1", 3, 0)
    assert (state.state, state.takes_new_sessions) == (NOLB, False)


@pytest.mark.parametrize(("op", "admin", "named"), [
    (2, 0, UP), (3, 0, NOLB), (2, 0x08, DRAIN), (2, 0x10, DRAIN), (0, 0, "DOWN"),
    (1, 0, "DOWN"), (2, 0x01, MAINT), (3, 0x09, MAINT), (2, 0x40, MAINT),
])
def test_states_as_show_stat_names_them(op, admin, named):
    state = ServerState("ivle", "s1", op, admin)
    assert state.state == named
    assert state.takes_new_sessions == (named == UP)
    assert (named in DRAINED) == (named in (NOLB, DRAIN))


NAMES = st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True)


@given(servers=st.dictionaries(NAMES, st.tuples(st.integers(0, 3), st.integers(0, 0x7F)),
                               min_size=1, max_size=8), data=st.data())
def test_every_server_of_an_answer_is_found_with_its_state(servers, data):
    rows = [(name, op, admin) for name, (op, admin) in servers.items()]
    name = data.draw(st.sampled_from(sorted(servers)))
    state = parse(answer(rows), "ivle", name, SOCK)
    assert (state.server, state.op_state, state.admin_state) == (name, *servers[name])


@given(cut=st.integers(0, len(REAL) - 1))
def test_an_answer_cut_anywhere_is_refused(cut):
    with pytest.raises(MaintError) as caught:
        parse(REAL[:cut], "ivle", "s1", SOCK)
    assert SOCK in str(caught.value) and "\n" not in str(caught.value)


@given(garbage=st.binary(max_size=400)
       | st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass"))
       | st.builds(lambda head, tail: head + tail, st.just(REAL[:-2]), st.binary(max_size=40)))
def test_any_bytes_are_a_state_or_one_line_naming_the_socket(garbage):
    try:
        state = parse(garbage, "ivle", "s1", SOCK)
    except MaintError as exc:
        assert SOCK in str(exc) and "\n" not in str(exc) and "\r" not in str(exc)
    else:
        assert (state.backend, state.server) == ("ivle", "s1")
        assert 0 <= state.op_state <= 3 and 0 <= state.admin_state <= 0xFF


@given(position=st.integers(0, len(REAL) - 3), byte=st.integers(0, 255))
def test_a_byte_changed_is_a_state_or_one_line(position, byte):
    mangled = REAL[:position] + bytes([byte]) + REAL[position + 1:]
    try:
        parse(mangled, "ivle", "s1", SOCK)
    except MaintError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(("data", "said"), [
    (b"Can't find backend.\n\n", "HAProxy has no backend ivle"),
    (answer([("s2", 2, 0)]), "has no server s1"),
    (answer([("s1", 2, 0), ("s1", 3, 0)]), "lists server s1 2 times"),
    (answer([("s1", 2, 0)], backend="other"), "a server of backend other"),
    (answer([("s1", 7, 0)]), "not states HAProxy has"),
    (answer([("s1", 2, 300)]), "not states HAProxy has"),
    (REAL.replace(b" 3 0 1 1", b" x 0 1 1"), "not a server's state"),
    (REAL.replace(b"18932 ", b""), "fields where the header names"),
    (b"2\n" + REAL[2:], "not HAProxy's 'show servers state' answer"),
    (REAL.replace(b"srv_op_state", b"srv_op"), "header"),
    (REAL.replace(b"127.0.0.1", b"127.0.0.1\x1b[2J"), "control characters"),
    (b"", "answered nothing"),
])
def test_what_is_refused_and_how_it_is_said(data, said):
    with pytest.raises(MaintError, match=None) as caught:
        parse(data, "ivle", "s1", SOCK)
    assert said in str(caught.value) and SOCK in str(caught.value)


def settings_with(tmp_path: Path, pool: str) -> object:
    path = tmp_path / "ivle-maint.conf"
    path.write_text(f"[node]\nrole = slave\nname = web1\n[pool]\n{pool}")
    return load_settings(str(path))


def test_the_defaults_ask_no_balancer(tmp_path):
    assert haproxy.target(settings_with(tmp_path, "")) is None  # type: ignore[arg-type]


def test_haproxy_settings_and_the_node_name_as_server(tmp_path):
    settings = settings_with(tmp_path, f"balancer = haproxy\nhaproxy_socket = {SOCK}\n")
    assert haproxy.target(settings) == haproxy.Target(SOCK, "ivle", "web1")  # type: ignore[arg-type]


@pytest.mark.parametrize(("pool", "said"), [
    ("balancer = haproxy\n", "needs [pool] haproxy_socket"),
    (f"balancer = haproxy\nhaproxy_socket = {SOCK}\nbackend = a b\n", "[pool] backend"),
    (f"balancer = haproxy\nhaproxy_socket = {SOCK}\nserver = s/1\n", "[pool] server"),
])
def test_settings_haproxy_cannot_use_are_refused(tmp_path, pool, said):
    with pytest.raises(ConfigError) as caught:
        haproxy.target(settings_with(tmp_path, pool))  # type: ignore[arg-type]
    assert said in str(caught.value)


def test_a_relative_socket_is_refused_by_the_settings(tmp_path):
    with pytest.raises(ConfigError, match="haproxy_socket"):
        settings_with(tmp_path, "haproxy_socket = admin.sock\n")

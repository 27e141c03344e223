"""The maintenance answer: its Apache configuration, Retry-After, mode, probe."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivle_maint import system
from ivle_maint.cluster.probe import ask
from ivle_maint.config import Settings, load_settings
from ivle_maint.context import downtime
from ivle_maint.errors import MaintError
from ivle_maint.procedure import STEPS
from ivle_maint.services import maintenance_page

WEB_DOWN = downtime(STEPS)  # stop-web to start-web


def settings_with(tmp_path: Path, text: str = "") -> Settings:
    path = tmp_path / "maint.conf"
    path.write_text(f"[node]\nrole = slave\n[paths]\nstate = {tmp_path / 'state'}\n{text}")
    return load_settings(str(path))


def test_mode_is_stop_by_default_then_env_then_option(tmp_path, monkeypatch):
    monkeypatch.delenv(maintenance_page.ENV_MODE, raising=False)
    settings = settings_with(tmp_path)
    assert maintenance_page.mode(settings) == "stop"
    monkeypatch.setenv(maintenance_page.ENV_MODE, "maintenance")
    assert maintenance_page.mode(settings) == "maintenance"
    assert maintenance_page.mode(settings, "stop") == "stop"
    monkeypatch.setenv(maintenance_page.ENV_MODE, "pause")
    with pytest.raises(MaintError, match="'pause': use one of stop, maintenance"):
        maintenance_page.mode(settings)


def read_back(argument: str) -> str:
    """ErrorDocument's quoted argument as Apache 2.4 reads it: its argument
    parser (\\\\ and \\"), then its expression's escapes (\\ooo, \\X).
    tests/abuse/test_maintenance_page_served.py checks the real Apache."""
    assert argument.startswith('"') and argument.endswith('"')
    parsed = re.sub(r'\\([\\"])', r"\1", argument[1:-1])
    assert not re.search(r"\$\{|%\{|(?<!\\)\$[0-9]", argument)
    return re.sub(r"\\([0-7]{3}|.)", lambda m: chr(int(m.group(1), 8))
                  if len(m.group(1)) == 3 else m.group(1), parsed)


def test_conf_answers_503_with_headers_and_the_page_on_one_line():
    page = '<html>\n  <p class="x">Back soon \\ caf\u00e9 %{REQUEST_URI} ${HOME} $1</p>\n</html>\n'
    text = maintenance_page.conf_text(42, page)
    assert "Redirect 503 /\n" in text
    assert 'Header always set Retry-After "42"' in text
    assert 'Header always set Cache-Control "no-store"' in text
    assert 'Header always set X-IVLE-Maintenance "1"' in text
    line = next(x for x in text.splitlines() if x.startswith("ErrorDocument 503 "))
    # One line, ASCII, read back by Apache as the page (non-ASCII as a reference).
    assert line.isascii() and line.isprintable()
    assert read_back(line.removeprefix("ErrorDocument 503 ")) == \
        page.replace("\u00e9", "&#233;")


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "in under a minute"), (1, "in under a minute"), (59, "in under a minute"),
    (60, "in about a minute"), (61, "in about 2 minutes"), (120, "in about 2 minutes"),
    (121, "in about 3 minutes"), (300, "in about 5 minutes"), (5400, "in about 90 minutes"),
    (5401, "in about 2 hours"), (7201, "in about 3 hours"),
])
def test_back_in_words_rounds_up(seconds, words):
    assert maintenance_page.back_in(seconds) == words


def stated_seconds(words: str) -> int:
    """The most the words promise: under a minute is 60 s, about N units is N of them."""
    if words == "in under a minute":
        return 60
    found = re.fullmatch(r"in about (a|\d+) (minute|hour)s?", words)
    assert found, words
    number, unit = found.groups()
    return (1 if number == "a" else int(number)) * (60 if unit == "minute" else 3600)


def served(seconds: int, page: str) -> tuple[str, str]:
    """(Retry-After header, the page as Apache sends it) from the generated conf."""
    text = maintenance_page.conf_text(seconds, page)
    header = re.search(r'Header always set Retry-After "(.*)"', text)
    body = next(x for x in text.splitlines() if x.startswith("ErrorDocument 503 "))
    assert header
    return header.group(1), read_back(body.removeprefix("ErrorDocument 503 "))


@given(st.integers(min_value=0, max_value=10 ** 7))
def test_default_page_says_when_and_reloads_when_the_header_says(seconds):
    words = maintenance_page.back_in(seconds)
    assert words and not re.search(r"\b0\b", words)
    assert seconds <= stated_seconds(words)  # rounded up: never sooner than the header
    header, body = served(seconds, maintenance_page.default_page(seconds))
    refresh = re.search(r'<meta http-equiv="refresh" content="(\d+)">', body)
    assert refresh and refresh.group(1) == header == str(seconds)
    assert f"IVLE is being upgraded and should be back {words}." in body


def test_the_page_says_the_retry_after_and_an_own_page_is_left_as_it_is(tmp_path):
    settings = settings_with(tmp_path)
    assert 'content="150"' in maintenance_page.page_text(settings, 150)
    assert "should be back in about 3 minutes." in maintenance_page.page_text(settings, 150)
    page = tmp_path / "page.html"
    page.write_text("<p>Back after lunch</p>")
    settings = settings_with(tmp_path, f"[web]\nmaintenance_page = {page}\n")
    assert maintenance_page.page_text(settings, 150) == "<p>Back after lunch</p>"


def test_words_in_the_page_are_html_escaped(monkeypatch):
    monkeypatch.setattr(maintenance_page, "back_in", lambda seconds: "<script>&")
    page = maintenance_page.default_page(30)
    assert "<script>" not in page and "&lt;script&gt;&amp;" in page


def journal(state: Path, name: str, created: float, down: float, up: float, *,
            state_word: str = "complete") -> None:
    (state / "journal").mkdir(parents=True, exist_ok=True)
    steps = {"stop-web": {"status": "done", "started": down, "finished": down + 1},
             "start-web": {"status": "done", "started": up - 1, "finished": up}}
    (state / "journal" / name).write_text(json.dumps({
        "old": "1.0", "new": "1.1", "role": "slave", "state": state_word,
        "steps": steps, "created": created}))


def test_retry_after_is_the_last_upgrades_web_down_time(tmp_path):
    settings = settings_with(tmp_path, "[web]\nretry_after = 120\n")
    assert maintenance_page.retry_after(settings, WEB_DOWN) == (120, "[web] retry_after")
    state = tmp_path / "state"
    journal(state, "0.9_to_1.0.100.json", 100, 1000.0, 1600.0)
    journal(state, "1.0_to_1.1.json", 200, 2000.0, 2041.2)
    journal(state, "1.1_to_1.2.json", 300, 3000.0, 3005.0, state_word="in-progress")  # unfinished
    assert maintenance_page.retry_after(settings, WEB_DOWN) == (42, "the upgrade 1.0 -> 1.1")


def test_replacement_page_read_and_bounded(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<p>Ours</p>")
    settings = settings_with(tmp_path, f"[web]\nmaintenance_page = {page}\n")
    assert maintenance_page.page_text(settings, 60) == "<p>Ours</p>"
    page.write_text("x" * (maintenance_page.PAGE_LIMIT + 1))
    with pytest.raises(MaintError, match="larger than"):
        maintenance_page.page_text(settings, 60)
    # What Apache would refuse, cut or redirect to: refused by the preflight.
    for text, message in [("", "empty"), ("<p>a\0b</p>", "NUL"), ("/index.html", "path or URL"),
                          ("https://status.example/", "path or URL"), ("Back:soon", "URL")]:
        page.write_text(text)
        with pytest.raises(MaintError, match=message):
            maintenance_page.page_text(settings, 60)
    page.write_text("/ back soon")  # a space: a message
    assert maintenance_page.page_text(settings, 60) == "/ back soon"
    page.unlink()
    with pytest.raises(MaintError, match="cannot read"):
        maintenance_page.page_text(settings, 60)


def test_preflight_in_maintenance_mode_needs_apache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no a2ensite anywhere on it
    monkeypatch.setattr(system, "SBIN_PATH", str(tmp_path))
    settings = settings_with(tmp_path)
    maintenance_page.preflight(settings, "stop")  # nothing needed
    with pytest.raises(MaintError, match="a2ensite not found"):
        maintenance_page.preflight(settings, "maintenance")


def test_plan_says_the_mode(tmp_path, monkeypatch):
    monkeypatch.delenv(maintenance_page.ENV_MODE, raising=False)
    settings = settings_with(tmp_path)
    assert "web server stopped" in maintenance_page.plan_line(settings, None, WEB_DOWN)
    line = maintenance_page.plan_line(settings, "maintenance", WEB_DOWN)
    assert "maintenance page (503, Retry-After 300s" in line and "ivle" in line


@pytest.fixture
def answer_503() -> Iterator[tuple[int, dict[str, str]]]:
    headers: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], headers
    httpd.shutdown()
    httpd.server_close()


def test_cluster_probe_recognises_the_maintenance_answer(answer_503):
    port, headers = answer_503
    plain = ask(f"http://127.0.0.1:{port}/", 3)
    assert not plain.serving and not plain.maintenance
    headers.update({"Retry-After": "30", "X-IVLE-Maintenance": "1"})
    paused = ask(f"http://127.0.0.1:{port}/", 3)
    assert not paused.serving and paused.maintenance
    assert "maintenance page" in paused.text


def test_a_node_in_maintenance_does_not_serve(tmp_path):
    """Its Apache runs, but answers only 503: the cluster row must say down."""
    from ivle_maint.cluster.admin import service_serving
    from ivle_maint.output import TerminalReporter

    initd = tmp_path / "initd"
    initd.mkdir()
    (initd / "apache2").write_text("#!/bin/sh\nexit 0\n")  # status: running
    (initd / "apache2").chmod(0o755)
    settings = settings_with(tmp_path, f"[services]\nbackend = init.d\ninitd_dir = {initd}\n")
    reporter = TerminalReporter()
    assert service_serving(settings, reporter, "1.0") == "1.0"
    maintenance_page.Record(["ivle"], 0.0).write(settings)
    assert maintenance_page.in_maintenance(settings)
    assert service_serving(settings, reporter, "1.0") is None


# -- the graceful restart waits for the old children's exits (pidfds) --------


class FakeControl:
    """The ServiceControl calls _graceful makes; the reload runs RELOAD."""

    backend = "init.d"

    def __init__(self, reload: list[str], timeout: float) -> None:
        self.reload, self.timeout, self.restarted = reload, timeout, False

    def status(self, name: str) -> str:
        return maintenance_page.RUNNING

    def may_start(self, name: str) -> None:
        pass

    def _argv(self, name: str, action: str) -> list[str]:
        return self.reload

    def restart(self, name: str) -> object:
        from ivle_maint.services.init_scripts import DONE, ServiceResult

        self.restarted = True
        return ServiceResult(name, "restart", DONE, maintenance_page.RUNNING, self.backend)


@pytest.fixture
def old_children(monkeypatch) -> Iterator[list]:
    """Two real processes standing for Apache's old children."""
    import subprocess

    from ivle_maint.children import start_time

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    starts = {p.pid: str(start_time(p.pid)) for p in procs}
    monkeypatch.setattr(maintenance_page, "_children", lambda: set(starts.items()))
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_graceful_restart_returns_once_the_old_children_are_gone(old_children):
    pids = " ".join(str(p.pid) for p in old_children)
    control = FakeControl(["sh", "-c", f"(sleep 0.2; kill {pids}) &"], timeout=60)
    said = maintenance_page._graceful(control, "apache2")  # type: ignore[arg-type]
    assert said.startswith("apache2: restarted gracefully, every old process gone"), said
    assert all(p.poll() is not None for p in old_children)  # exited (reaped by poll)
    assert not control.restarted


def test_graceful_restart_restarts_when_an_old_child_stays_busy(old_children):
    control = FakeControl(["true"], timeout=0.2)
    said = maintenance_page._graceful(control, "apache2")  # type: ignore[arg-type]
    assert said == "apache2: old children still busy after 0.2s: apache2: restarted (init.d, 0.0s)"
    assert control.restarted


times = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                  st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e300, -1e300]))


@settings(deadline=None, max_examples=60)
@given(readings=st.lists(times, min_size=4, max_size=4),
       mono=st.one_of(st.none(), st.lists(times, min_size=4, max_size=4)))
def test_any_times_in_a_journal_give_a_retry_after_a_browser_can_read(
        tmp_path_factory: pytest.TempPathFactory, readings: list[float],
        mono: list[float] | None) -> None:
    """Times as a clock that jumped, a hand edit or damage leave them (JSON's
    Infinity and NaN too): one bounded figure, header and reload alike."""
    tmp_path = tmp_path_factory.mktemp("times")
    settings_ = settings_with(tmp_path)
    steps = {}
    for n, name in enumerate(WEB_DOWN):
        step = {"status": "done", "started": readings[2 * n], "finished": readings[2 * n + 1]}
        if mono is not None:
            step.update(mono_started=mono[2 * n], mono_finished=mono[2 * n + 1], boot="b")
        steps[name] = step
    (tmp_path / "state" / "journal").mkdir(parents=True)
    (tmp_path / "state" / "journal" / "1.0_to_1.1.json").write_text(json.dumps({
        "old": "1.0", "new": "1.1", "role": "slave", "state": "complete", "steps": steps}))
    seconds, _source = maintenance_page.retry_after(settings_, WEB_DOWN)
    assert 1 <= seconds <= maintenance_page.RETRY_AFTER_MAX
    header, body = served(seconds, maintenance_page.default_page(seconds))
    assert re.fullmatch(r"[0-9]{1,6}", header) and int(header) == seconds
    assert f'content="{seconds}"' in body and seconds <= stated_seconds(
        maintenance_page.back_in(seconds))


def test_a_retry_after_setting_past_a_week_is_refused(tmp_path):
    with pytest.raises(MaintError, match="retry_after"):
        settings_with(tmp_path, f"[web]\nretry_after = {maintenance_page.RETRY_AFTER_MAX + 1}\n")
    assert settings_with(tmp_path, f"[web]\nretry_after = {maintenance_page.RETRY_AFTER_MAX}\n")


STUDENT = 65534


def _student_at(pid: int) -> subprocess.Popen[bytes] | None:
    """A student's process with exactly this pid, or None when another fork
    on the machine took it first (the kernel's ns_last_pid)."""
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
            handle.write(str(pid - 1))
        proc = subprocess.Popen(["setpriv", f"--reuid={STUDENT}", f"--regid={STUDENT}",
                                 "--clear-groups", "sleep", "600"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="a student's process at a chosen pid: root")
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), data=st.data())
def test_an_old_child_whose_pid_a_student_takes_before_its_pidfd_is_never_waited_for(
        monkeypatch: pytest.MonkeyPatch, n: int, data: st.DataObject) -> None:
    """The graceful restart judges Apache's old children by their program
    and start time, then opens a pidfd on each pid.  At the one generated
    (VICTIM), the old child ends first and a student's process takes its
    pid: that process is never waited for (no [services] timeout spent on
    it, no full restart) and never signalled."""
    from ivle_maint.children import start_time

    victim = data.draw(st.integers(0, n - 1), label="victim")
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(n)]
    starts = {p.pid: str(start_time(p.pid)) for p in procs}
    # A start time counts clock ticks: the student's process starts in a
    # later one (as it would after the pid space went round), not beside.
    tick = os.sysconf("SC_CLK_TCK")
    while time.clock_gettime(time.CLOCK_BOOTTIME) * tick < max(map(int, starts.values())) + 2:
        time.sleep(0.005)
    target = procs[victim]
    student: list[subprocess.Popen[bytes]] = []
    real_open = os.pidfd_open

    def pidfd_open(pid: int, flags: int = 0) -> int:
        if pid == target.pid and not student and target.poll() is None:
            target.kill()
            target.wait()
            taker = _student_at(pid)
            if taker is not None:
                student.append(taker)
        return real_open(pid, flags)

    class Control(FakeControl):
        def _argv(self, name: str, action: str) -> list[str]:  # Apache ends its old ones
            left = " ".join(str(p.pid) for p in procs if p is not target)
            return ["sh", "-c", f"(sleep 0.1; kill {left}) &" if left else "true"]

    monkeypatch.setattr(maintenance_page, "_children", lambda: set(starts.items()))
    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    control = Control([], timeout=30)
    try:
        said = maintenance_page._graceful(control, "apache2")  # type: ignore[arg-type]
    finally:
        monkeypatch.undo()
        alive = [p.poll() is None for p in student]
        for proc in [*procs, *student]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if not student:
        return  # another fork took the pid: nothing was tried
    assert alive == [True], "the student's process that took an old child's pid was signalled"
    assert not control.restarted, f"waited for the student's process: {said}"


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=20000)),
                min_size=1, max_size=4))
def test_an_upgrade_that_kept_the_site_up_is_no_measure_of_the_outage(
        tmp_path_factory: pytest.TempPathFactory, upgrades: list[tuple[bool, int]]) -> None:
    """A release that needed no outage (stop-web skipped, Apache reloaded)
    had no web-down time: its stop-web-to-start-web span (the unpack, the
    steps between) is not what the next outage will take.  Before: the
    newest such journal gave the Retry-After, and the page's reload, of a
    full upgrade (a reinstall's 3 s for a 10-minute migration)."""
    tmp_path = tmp_path_factory.mktemp("kept-up")
    settings_ = settings_with(tmp_path, "[web]\nretry_after = 777\n")
    state = tmp_path / "state"
    for n, (kept_up, span) in enumerate(upgrades):
        down = 10_000.0 * (n + 1)
        name = f"1.0_to_1.1.{100 + n}.json"  # archived: complete upgrades, in order
        journal(state, name, 100 + n, down, down + span)
        if kept_up:  # as release_needs.skipped records it
            path = state / "journal" / name
            data = json.loads(path.read_text())
            data["steps"]["stop-web"]["metrics"] = {"skipped": "no migrations, no jail rebuild"}
            path.write_text(json.dumps(data))
    down_for = [span for kept_up, span in upgrades if not kept_up]
    expected = down_for[-1] if down_for else 777
    assert maintenance_page.retry_after(settings_, WEB_DOWN)[0] == expected


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.text(max_size=12), st.sampled_from(["ivle", "-h", "../x", "a b"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.one_of(
    st.fixed_dictionaries({"disabled": st.one_of(_JSON, st.lists(_JSON, max_size=3),
                                                 st.just("ivle")),
                           "since": st.one_of(_JSON, st.just(0))}), _JSON))
def test_whatever_the_maintenance_record_holds_only_site_names_reach_a2ensite(
        tmp_path_factory: pytest.TempPathFactory, record: object) -> None:
    """stop-web's record of the sites it disabled (STATE/maintenance.json),
    damaged or edited by hand (generated JSON): its one reader gives
    start-web only names a2ensite takes as sites (names.why_not_a_site_name),
    or one line naming the file.  Before: `"disabled": "ivle"` gave
    a2ensite i, v, l and e; `["-h"]` an option; `[["a"]]` the text "['a']"."""
    from ivle_maint.gates import names

    tmp_path = tmp_path_factory.mktemp("record")
    settings_ = settings_with(tmp_path)
    (tmp_path / "state").mkdir()
    maintenance_page.Record.path(settings_).write_text(json.dumps(record))
    try:
        read = maintenance_page.Record.read(settings_)
    except MaintError as exc:
        assert "\n" not in str(exc) and maintenance_page.RECORD in str(exc), exc
        return
    assert read is not None
    for name in read.disabled:
        assert isinstance(name, str) and names.why_not_a_site_name(name) is None, read
    assert read.disabled == record["disabled"]  # type: ignore[index]


APACHE2 = Path("/usr/sbin/apache2")
APACHE_MODULES = Path("/usr/lib/apache2/modules")


@pytest.mark.skipif(os.geteuid() != 0 or not APACHE2.exists(),
                    reason="needs root (to be another user) and Debian's apache2")
def test_a_local_users_own_apache_is_never_taken_for_the_web_servers_old_children() -> None:
    """Anyone may run /usr/sbin/apache2 (0755) with a configuration of their
    own on a high port: a local user's main process and its children are
    that very program, whose parent is that program.  The maintenance
    page's graceful reload waits for the web server's old children only:
    those of an apache2 run by root on the machine's root (a real one runs
    beside, its children found).  Before, the user's children were waited
    for: every reload in maintenance mode waited [services] timeout, then
    restarted Apache fully, cutting the requests in flight and refusing
    connections."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="theirs-", dir="/tmp"))  # a directory they may reach
    work.chmod(0o755)
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for who in ("user", "root"):
            where = work / who
            where.mkdir()
            (where / "httpd.conf").write_text(
                f"ServerRoot {where}\nDefaultRuntimeDir {where}\nListen 127.0.0.1:{_free_port()}\n"
                f"PidFile {where}/pid\nErrorLog {where}/error.log\nServerName localhost\n"
                f"LoadModule mpm_event_module {APACHE_MODULES}/mod_mpm_event.so\n"
                f"LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so\n"
                "StartServers 2\nUser nobody\nGroup nogroup\n")
            become = [] if who == "root" else [
                "setpriv", f"--reuid={STUDENT}", f"--regid={STUDENT}", "--clear-groups"]
            if who == "user":
                os.chown(where, STUDENT, STUDENT)
            servers[who] = subprocess.Popen(
                [*become, str(APACHE2), "-f", str(where / "httpd.conf"), "-D", "FOREGROUND"],
                cwd="/", env={"PATH": "/usr/bin:/bin"})
        kids = {who: _children_of(proc, work / who) for who, proc in servers.items()}
        waited_for = {pid for pid, _start in maintenance_page._children()}
        assert not waited_for & {servers["user"].pid, *kids["user"]}, (waited_for, kids)
        assert set(kids["root"]) <= waited_for, (waited_for, kids)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(work)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children_of(main: subprocess.Popen[bytes], where: Path) -> list[int]:
    """MAIN's children, once it has forked two (StartServers)."""
    guard = time.monotonic() + 60  # against a hang, not a measure of speed
    kids: list[int] = []
    while len(kids) < 2 and main.poll() is None and time.monotonic() < guard:
        kids = [int(e) for e in os.listdir("/proc") if e.isdigit()
                and _parent_of(int(e)) == main.pid]
        time.sleep(0.01)
    log = where / "error.log"
    assert len(kids) >= 2, log.read_text() if log.exists() else "no error log"
    return kids


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None

"""Every wait bounded, told and interruptible.

Rule: nothing ivle-maint waits for can hold it for ever, silently, or deaf
to the person at the terminal.

- Signals.  While a command runs (signals()), Ctrl-C (SIGINT) raises
  KeyboardInterrupt and SIGTERM raises Terminated wherever ivle-maint is,
  except inside the logging module's lock or a deferred() block (a journal
  record being written), where the exception waits until it is safe.  Both
  unwind through the step, which the runner journals as interrupted (a step
  is never re-wrapped as a failure), and the command exits 130 or 143
  (128 + the signal); whatever error the unwinding causes on its way (a
  closed connection, say) changes neither (received()).
- Database statements.  interruptible() makes psycopg2 wait through wait(),
  which waits on the connection's socket in Python, so a signal's handler
  runs at once.  An interrupted statement is cancelled on the server
  (conn.cancel()) and its answer awaited before the interrupt goes on;
  psycopg2 then closes the connection, which ends the server session, its
  transaction and its locks.  A statement that waits for another session's
  lock is told: after FIRST_LOOK seconds, then every [database]
  tell_interval, one line names the holders (server pid, user,
  application, since when, their query) from pg_blocking_pids() and
  pg_stat_activity; the server gives up after [database]
  statement_lock_timeout (the session's lock_timeout, gates/environment),
  and the failure says whom to end.  A migration's try (short_waits())
  gives way after [database] ddl_lock_timeout instead: its holders are
  looked at before then and kept for the line that tells the retry
  (db/apply.py), but told by a look only once the wait lasts tell_interval.
- Connecting.  A non-blocking connection (as wait() makes them) ignores
  libpq's connect_timeout: the deadline given to connecting() bounds it.
- Children.  A command runs with its timeout (system.run) and its output
  is read only until it ends or is killed; an interrupted wait kills it.
- Pipes.  read_pipe() never reads a terminal, nor waits more than
  PIPE_QUIET seconds for a silent writer.
- Sockets.  A socket's timeout bounds each read, not the exchange: a peer
  that sends a byte of its answer before each timeout holds
  its reader for ever.  SocketDeadline shuts every connection it made down
  at its deadline, so the reader's next (or current) read ends there
  (gates/web.py: every GET, of a cluster row's URL or [pool] ready_url).
- Threads.  Signals arrive in the main thread only.  Work that runs beside
  it (children.Workers: steps that overlap, user jails remade in batches)
  is stopped through stop_workers(): a worker's database wait sees the
  stop at once (its select() also watches a pipe) and unwinds as the
  interruption did (received(), else Stopped); children.py ends the
  workers' commands.  deferred() blocks only the main thread's signals.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ..errors import MaintError
from .text import shown

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
FIRST_LOOK = 1.0  # seconds a statement waits before the first look at its blockers
SIDE_CONNECT = 5.0  # seconds to open the connection that looks
QUERY_CHARS = 160  # of a holder's query, in a message


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C; the command exits 143."""


class Stopped(BaseException):
    """A worker thread's wait was stopped: the run ends for another reason
    than a signal (the main thread failed)."""


def exit_status(exc: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def describe(exc: BaseException) -> str:
    """How the journal and the person are told of an interruption."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (SIGINT)"


# A signal's exception raised inside the logging module (its lock, or its
# fork hook that releases the lock, where the exception is even swallowed)
# leaves the lock held, and the next log record deadlocks: there, and in a
# deferred() block, the exception waits, and a timer (SIGALRM) tries again
# a moment later.
_FRAGILE = (logging.__file__,)
RETRY_SECONDS = 0.02
_pending: list[int] = []


_deferring = [0]  # depth of deferred() blocks


def _fragile(frame: FrameType | None) -> bool:
    if _deferring[0]:
        return True
    return frame is not None and frame.f_code.co_filename in _FRAGILE


def _in_main() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives in the block unwinds when it ends (a journal
    record is written whole, then the interruption goes on).  In a worker
    thread, which no signal reaches, it changes nothing: its count would
    defer the main thread's signals, and the pending one be raised here."""
    if not _in_main():
        yield
        return
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
    if not _deferring[0] and _pending:
        signal.setitimer(signal.ITIMER_REAL, 0)
        first = _pending[0]
        _pending.clear()
        _raise_for(first)


def _exception_for(signum: int) -> BaseException:
    return Terminated(describe(Terminated())) if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_for(signum: int) -> None:
    raise _exception_for(signum)


# The signal this command received, if any: whatever error its unwinding
# then causes (a closed connection, a step's failure line), the outcome is
# the interruption (the runner and the command line ask received()).
_received: list[int] = []


def received() -> BaseException | None:
    """The interruption this command received (to raise), or None."""
    return _exception_for(_received[0]) if _received else None


def checkpoint() -> None:
    """Between steps: a signal received whose exception never unwound (it
    landed in a finalizer or a weakref callback, where Python swallows any
    exception) stops the run here, before another step starts.  In a worker
    thread, a stop does too (stop_workers)."""
    interrupt = received()
    if interrupt is not None:
        raise interrupt
    if _stop.is_set() and not _in_main():
        raise Stopped("the run is ending")


# -- stopping worker threads ---------------------------------------------------

_stop = threading.Event()
_stop_pipe: list[int] = []  # (read end, write end), made by the first worker
_pipe_lock = threading.Lock()


def stop_fd() -> int | None:
    """The descriptor a worker's select() also watches: readable once the
    workers are told to stop (None in the main thread)."""
    if _in_main():
        return None
    with _pipe_lock:
        if not _stop_pipe:
            read_end, write_end = os.pipe()  # not inherited by children (PEP 446)
            os.set_blocking(write_end, False)
            _stop_pipe.extend((read_end, write_end))
            if _stop.is_set():
                os.write(write_end, b"x")
        return _stop_pipe[0]


def stop_workers() -> None:
    """Tell every worker thread to stop what it waits for (the main thread,
    interrupted or failing, ends the run)."""
    with _pipe_lock:
        _stop.set()
        if _stop_pipe:
            with suppress(BlockingIOError):  # full: readable already
                os.write(_stop_pipe[1], b"x")


def stopping() -> bool:
    """Have the workers been told to stop?"""
    return _stop.is_set()


def resume_workers() -> None:
    """Every worker has ended: the next ones may run (tests run many)."""
    with _pipe_lock:
        _stop.clear()
        if _stop_pipe:
            os.set_blocking(_stop_pipe[0], False)
            with suppress(BlockingIOError):  # drained
                while os.read(_stop_pipe[0], 4096):
                    pass


def stopped() -> BaseException:
    """What a stopped worker raises: the signal's interruption, if any."""
    return received() or Stopped("the run is ending")


def _unraisable(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """sys.unraisablehook: an interruption swallowed in a finalizer is not a
    traceback on the terminal (checkpoint() acts on it); anything else is
    what it was."""
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt | Terminated):
            log.debug("interruption landed in %r; acted on at the next step",
                      unraisable.object)
            return
        previous(unraisable)
    return hook


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if not _received:
        _received.append(signum)
    if _fragile(frame):
        if signum not in _pending:
            _pending.append(signum)
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    _raise_for(signum)


def _on_retry(signum: int, frame: FrameType | None) -> None:
    if not _pending:
        return
    if _fragile(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    first = _pending[0]
    _pending.clear()
    _raise_for(first)


@contextmanager
def signals() -> Iterator[None]:
    """While a command runs: SIGINT and SIGTERM unwind (KeyboardInterrupt,
    Terminated), never inside the logging module's lock."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGTERM: _on_signal, signal.SIGALRM: _on_retry}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored
        handlers[signal.SIGINT] = _on_signal
    _received.clear()
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(previous_hook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.setitimer(signal.ITIMER_REAL, 0)
        _pending.clear()
        _received.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interruptible() -> None:
    """Every psycopg2 wait goes through wait() (before each connection)."""
    from ..pgdriver import psycopg2

    if psycopg2.extensions.get_wait_callback() is not wait:
        psycopg2.extensions.set_wait_callback(wait)


# -- telling who blocks a statement ------------------------------------------


@dataclass
class Watch:
    """How one connection's waits are told."""

    tell: Callable[[str], None]
    open_side: Callable[[], Any]  # a second connection, to look from
    interval: float
    gives_up: str  # e.g. "gives up after 300s ([database] statement_lock_timeout)"
    doing: str = "a database statement"
    holders: list[tuple[int, str]] = field(default_factory=list)  # the last seen: pid, text
    wanted: str = ""  # the lock the last look saw the statement wait for
    first_look: float = FIRST_LOOK  # seconds into a wait of the first look
    quiet_for: float = 0.0  # looks before this many seconds only note the holders


_watches: weakref.WeakKeyDictionary[Any, Watch] = weakref.WeakKeyDictionary()


class _Deadlines(threading.local):
    """connecting() deadlines, innermost last, each thread its own."""

    def __init__(self) -> None:
        self.stack: list[float] = []


_deadlines = _Deadlines()


def watch(conn: Any, watcher: Watch) -> None:
    _watches[conn] = watcher


def doing(conn: Any, what: str) -> None:
    """Name what conn's next statements do, for the lines that tell a wait."""
    watcher = _watches.get(conn)
    if watcher is not None:
        watcher.doing = what
        watcher.holders = []


def last_holders(conn: Any) -> list[tuple[int, str]]:
    """The holders the last look found (the failure names them)."""
    watcher = _watches.get(conn)
    return list(watcher.holders) if watcher is not None else []


def last_wanted(conn: Any) -> str:
    """The lock the last look saw conn's statement wait for ('' if none)."""
    watcher = _watches.get(conn)
    return watcher.wanted if watcher is not None else ""


@contextmanager
def short_waits(conn: Any, *, lock_timeout: float, gives_up: str) -> Iterator[None]:
    """conn's statements run with a short lock_timeout (a migration's try): the
    holders are looked at before it expires, so the retry can name them, but
    told only once a wait lasts tell_interval; lines say GIVES_UP."""
    watcher = _watches.get(conn)
    if watcher is None:
        yield
        return
    saved = (watcher.gives_up, watcher.first_look, watcher.quiet_for)
    watcher.gives_up = gives_up
    watcher.first_look = min(FIRST_LOOK, lock_timeout / 2)
    watcher.quiet_for = watcher.interval
    watcher.holders, watcher.wanted = [], ""
    try:
        yield
    finally:
        watcher.gives_up, watcher.first_look, watcher.quiet_for = saved


def printable(text: object, limit: int = QUERY_CHARS) -> str:
    """Text from the server (a query, a name) on one printable line, cut at
    LIMIT: white space folded for reading, the rest escaped by gates.text."""
    safe = shown(" ".join(str(text).split()))
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


_HOLDERS = """
SELECT a.pid, a.usename, a.application_name, a.state,
       coalesce(a.xact_start, a.query_start, a.backend_start), a.query,
       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start, a.backend_start)),
       (SELECT string_agg(DISTINCT w.mode || ' on ' ||
               coalesce(w.relation::regclass::text, w.locktype), ', ')
          FROM pg_locks w WHERE w.pid = %(me)s AND NOT w.granted)
  FROM pg_stat_activity a
 WHERE a.pid = ANY (pg_blocking_pids(%(me)s))
 ORDER BY a.pid
"""


def holders(side: Any, backend_pid: int) -> tuple[str, list[tuple[int, str]]]:
    """(the lock backend_pid waits for, one text per session that holds it)."""
    with side.cursor() as cur:
        cur.execute(_HOLDERS, {"me": backend_pid})
        rows = cur.fetchall()
    wanted = next((row[7] for row in rows if row[7]), "") or ""
    found = []
    for pid, user, app, state, since, query, age, _ in rows:
        when = f", since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if since else ""
        when += f", {float(age):.0f}s ago" if age is not None else ""
        what = f"{printable(state or '?', 40)}: {printable(query)}" if query else "?"
        app_text = f", {printable(app, 60)}" if app else ""
        who = printable(user or "?", 64)
        found.append((int(pid), f"server pid {pid} (user {who}{app_text}{when}; {what})"))
    return printable(wanted, 200), found


def _look(conn: Any, watcher: Watch, waited: float) -> None:
    """One look at who blocks conn's statement; told only when someone does."""
    from ..pgdriver import psycopg2

    try:
        with connecting(SIDE_CONNECT):  # the look itself is bounded too
            side = watcher.open_side()
            try:
                wanted, found = holders(side, conn.info.backend_pid)
            finally:
                side.close()
    except psycopg2.Error as exc:
        log.info("cannot see who blocks %s: %s", watcher.doing, printable(exc, 200))
        return
    watcher.holders, watcher.wanted = found, wanted
    if found and waited >= watcher.quiet_for:
        lock = f" ({wanted})" if wanted else ""
        watcher.tell(f"{watcher.doing} has waited {waited:.0f}s for a lock{lock} held by "
                     f"{'; '.join(text for _, text in found)}; {watcher.gives_up}")


# -- the wait callback ---------------------------------------------------------


@contextmanager
def connecting(seconds: float) -> Iterator[None]:
    """Bound the connections opened in the block (libpq's connect_timeout cannot)."""
    _deadlines.stack.append(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadlines.stack.pop()


def _cancel(conn: Any) -> bool:
    """Ask the server to cancel conn's statement; False when it cannot be."""
    from ..pgdriver import psycopg2

    try:
        conn.cancel()
    except psycopg2.Error:
        return False
    return True


def wait(conn: Any) -> None:
    """psycopg2's wait callback: poll conn until done, bounded, told, interruptible."""
    from ..pgdriver import psycopg2

    ext = psycopg2.extensions

    watcher = _watches.get(conn)
    started = time.monotonic()
    next_look = started + (watcher.first_look if watcher is not None else FIRST_LOOK)
    deadline = _deadlines.stack[-1] if _deadlines.stack and not watcher else None
    interrupted: BaseException | None = None
    stop = stop_fd()  # a worker thread: stop_workers() interrupts it too
    while True:
        try:
            state = conn.poll()
            if state == ext.POLL_OK:
                break
            fds = [conn.fileno()]
            readable, writable = (fds, []) if state == ext.POLL_READ else ([], fds)
            if state not in (ext.POLL_READ, ext.POLL_WRITE):
                raise psycopg2.OperationalError(f"bad state from poll: {state}")
            now = time.monotonic()
            timeouts = []
            if deadline is not None:
                if now >= deadline:
                    raise psycopg2.OperationalError("timeout expired")
                timeouts.append(deadline - now)
            if watcher is not None and interrupted is None:
                if now >= next_look:
                    _look(conn, watcher, now - started)
                    next_look = time.monotonic() + watcher.interval
                timeouts.append(max(0.0, next_look - time.monotonic()))
            watched = [*readable, stop] if stop is not None and interrupted is None \
                else readable
            ready, _, _ = select.select(watched, writable, [],
                                        min(timeouts) if timeouts else None)
            if stop is not None and stop in ready:
                raise stopped()
        except (KeyboardInterrupt, Terminated, Stopped) as exc:
            # The first signal cancels the statement on the server and waits
            # for its answer; a second one stops waiting for the server too.
            if interrupted is not None or not _cancel(conn):
                raise
            interrupted = exc
            log.info("%s: cancelling the running statement", describe(exc))
        except psycopg2.Error:
            if interrupted is not None:
                raise interrupted from None
            raise
    if interrupted is not None:
        raise interrupted  # psycopg2 closes the connection: the session ends


# -- reading a pipe ------------------------------------------------------------

PIPE_QUIET = 60.0  # seconds a pipe may stay silent before the read gives up
PIPE_LIMIT = 16 * 1024 * 1024


def read_pipe(fd: int, what: str, *, quiet: float | None = None,
              limit: int | None = None) -> bytes:
    """All of a pipe (stdin, say) up to its end: never a terminal, never more
    than limit bytes, and never a wait of more than quiet seconds for the
    next bytes.  Raises MaintError saying which."""
    quiet = PIPE_QUIET if quiet is None else quiet
    limit = PIPE_LIMIT if limit is None else limit
    if os.isatty(fd):
        raise MaintError(f"{what}: is a terminal; give a file, or pipe it in")
    chunks: list[bytes] = []
    size = 0
    while True:
        readable, _, _ = select.select([fd], [], [], quiet)
        if not readable:
            raise MaintError(f"{what}: nothing read for {quiet:g}s and no end: the writer "
                             "never closed it; give a file instead")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise MaintError(f"{what}: more than {limit} bytes")
        chunks.append(chunk)


# -- a deadline for a whole exchange over sockets ---------------------------------

class SocketDeadline:
    """Within `with SocketDeadline(seconds) as deadline:`, every connection
    made by deadline.create_connection (socket.create_connection's
    signature: http.client's HTTPConnection._create_connection), or by
    deadline.connect_unix (a Unix socket: HAProxy's stats socket), is shut
    down once SECONDS have passed since the block began, whatever is being
    read or written then; one made after is refused (TimeoutError).  It
    shuts down a duplicate of the socket, its own until the block ends, so
    no descriptor number reused meanwhile is ever touched."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds
        self.expired = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._held: list[Any] = []
        self._cutter = threading.Thread(target=self._cut, name="socket deadline", daemon=True)

    def __enter__(self) -> SocketDeadline:
        self._cutter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._cutter.join()
        for held in self._held:
            held.close()

    def create_connection(self, address: Any, timeout: Any = None,
                          source_address: Any = None, **more: Any) -> Any:
        """socket.create_connection within the deadline, its name lookup
        included: the resolver's own timeouts (5 s a try, per server, per
        address family) and a connect per address, each given TIMEOUT
        whole, would add up past it."""
        import socket

        host, port = address[:2]
        last: OSError | None = None
        for family, kind, proto, _name, where in self._resolved(host, port):
            left = self._ends - time.monotonic()
            if left <= 0:
                break
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(left if timeout is None else min(timeout, left))
                if source_address:
                    sock.bind(source_address)
                sock.connect(where)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return self._hold(sock)
        if time.monotonic() >= self._ends:
            raise TimeoutError("timed out")
        raise last or OSError(f"no address for {host}")

    def _resolved(self, host: str, port: Any) -> list[Any]:
        """getaddrinfo(HOST, PORT), given what is left of the deadline: asked
        in a thread of its own, left behind (a daemon) when time runs out,
        since a lookup cannot be cancelled."""
        import socket

        found: list[Any] = []
        failed: list[OSError] = []

        def lookup() -> None:
            try:
                found.extend(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
            except OSError as exc:
                failed.append(exc)

        asking = threading.Thread(target=lookup, name="socket deadline lookup", daemon=True)
        asking.start()
        asking.join(max(0.0, self._ends - time.monotonic()))
        if asking.is_alive():
            raise TimeoutError("timed out looking up the host name")
        if failed:
            raise failed[0]
        return found

    def _hold(self, sock: Any) -> Any:
        with self._lock:
            if self.expired:
                sock.close()
                raise TimeoutError("timed out")
            self._held.append(sock.dup())
        return sock

    def connect_unix(self, path: str) -> Any:
        """A stream connection to the Unix socket PATH (HAProxy's stats
        socket), held as create_connection's are: shut down once the
        deadline passes, whatever is being read or written then."""
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:  # connect() to a full backlog waits too: only what is left of the deadline
            sock.settimeout(max(self._ends - time.monotonic(), 0.001))
            sock.connect(path)
            sock.settimeout(None)  # from here the deadline alone ends a read or a write
        except BaseException:
            sock.close()
            raise
        return self._hold(sock)

    def _cut(self) -> None:
        import socket

        if self._done.wait(self.seconds):
            return
        with self._lock:
            self.expired = True
            for held in self._held:
                with suppress(OSError):
                    held.shutdown(socket.SHUT_RDWR)

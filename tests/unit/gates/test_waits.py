"""The signal handling of gates/waits.py, with real signals to this process."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from types import FrameType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.gates import waits


def test_sigterm_raises_terminated_and_is_remembered() -> None:
    with waits.signals():
        with pytest.raises(waits.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # not reached: the handler raises first
        assert isinstance(waits.received(), waits.Terminated)
    assert waits.received() is None  # forgotten with the command
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_in_a_deferred_block_unwinds_when_it_ends() -> None:
    reached_end = False
    with waits.signals(), pytest.raises(KeyboardInterrupt), waits.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler has run by now, and waited
            pass
        reached_end = True
    assert reached_end


def test_a_signal_in_the_logging_lock_waits_for_its_release() -> None:
    caught = []
    with waits.signals():
        try:
            logging._acquireLock()  # type: ignore[attr-defined]
            try:
                # Delivered while logging's code is on top: it must wait.
                waits._on_signal(signal.SIGTERM, _logging_frame())
            finally:
                logging._releaseLock()  # type: ignore[attr-defined]
            signal.pause()  # the retry timer delivers it here
        except waits.Terminated as exc:
            caught.append(exc)
    assert caught


def _logging_frame() -> FrameType:
    """A frame of the logging module's own code."""
    frames: list[FrameType] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            frames.append(sys._getframe(1))

    logger = logging.getLogger("waits-probe")
    logger.addHandler(Probe())
    logger.propagate = False
    logger.error("probe")
    return frames[0]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), st.integers(10, 200))
def test_server_text_is_one_printable_bounded_line(text: str, limit: int) -> None:
    line = waits.printable(text, limit)
    assert line.isprintable() and len(line) <= limit


def test_a_signal_swallowed_by_a_weakref_callback_stops_the_run_at_the_next_step(
        capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM landing in a weakref callback (a WeakSet's, as a CI run saw):
    Python swallows the exception there.  No traceback reaches the terminal,
    and the runner's checkpoint raises it before another step starts."""
    import weakref

    class Thing:
        pass

    def callback(_ref: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at a bytecode boundary in here
            pass

    with waits.signals():
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing  # the callback runs, the Terminated it raises is swallowed
        assert ref() is None
        with pytest.raises(waits.Terminated):
            waits.checkpoint()
    assert "Traceback" not in capsys.readouterr().err


def test_no_signal_no_checkpoint() -> None:
    with waits.signals():
        waits.checkpoint()  # nothing received: nothing raised


def test_a_unix_socket_that_answers_nothing_is_cut_at_the_deadline(tmp_path) -> None:
    """SocketDeadline.connect_unix: a server that accepts and stays silent
    holds the reader no longer than the deadline, which says it expired."""
    with tempfile.TemporaryDirectory(prefix="w-") as short:  # AF_UNIX: 108 bytes
        path = f"{short}/s"
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen(1)
            with waits.SocketDeadline(0.3) as deadline:
                sock = deadline.connect_unix(path)
                with sock:
                    assert sock.recv(10) == b""  # shut down under the read, never a timeout
                assert deadline.expired

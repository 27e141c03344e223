"""The reporter: a reader that went away never stops the work."""

from __future__ import annotations

import os

from ivle_maint.output import TerminalReporter


def test_a_closed_pipe_drops_output_and_the_run_goes_on():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    os.close(read_end)  # `| tee log` whose tee was killed
    reporter = TerminalReporter(stream, tty=True)
    reporter.info("stop the web server ...")
    reporter.progress("user jails", 1, 2)
    reporter.warn("still going")
    assert reporter.broken
    # The descriptor now points at /dev/null: the final flush at exit succeeds.
    stream.write("last words\n")
    stream.flush()
    stream.close()


def test_a_closed_stream_object_is_no_error():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    stream.close()
    reporter = TerminalReporter(stream, tty=False)
    reporter.info("abort: start-web: started")
    assert reporter.broken
    os.close(read_end)

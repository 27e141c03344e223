"""gates.text: whatever text comes from outside, what leaves ivle-maint has
no control character, no forged `ivle-maint:` line, and printable text is
kept as it is.  Generated, not listed: all of Unicode, surrogates, bytes."""

from __future__ import annotations

import io
import logging
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from ivle_maint.errors import MaintError
from ivle_maint.gates.text import LINE_LIMIT, block, joined, lines, listing, shown
from ivle_maint.journal import _recorded
from ivle_maint.logfile import SafeFormatter
from ivle_maint.output import TerminalReporter

EXAMPLES = settings(max_examples=200, deadline=None)
PRINTABLE_ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e))
# Every code point, lone surrogates included (st.text() leaves those out).
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF,
                                          blacklist_categories=()))
HOSTILE = st.lists(st.sampled_from(["\n", "\r", "\x1b]0;title\x07", "\x1b[2J", "\u202e",
                                    "\x9b", "\udc9b", "\u2028", "\x85", "\n  ", "\t",
                                    "ivle-maint: error: forged", "\x00", "\x7f"]),
                   max_size=8).map("".join)
TEXT = st.one_of(ANY_TEXT, HOSTILE, st.text())


def no_control(text: str) -> bool:
    return text.isprintable() and text.encode("utf-8") is not None


@EXAMPLES
@given(TEXT)
def test_a_field_is_one_printable_line_whatever_it_holds(text: str) -> None:
    out = shown(text)
    assert no_control(out)
    assert "\n" not in out and "\r" not in out


@EXAMPLES
@given(st.binary())
def test_bytes_that_are_not_utf8_are_shown_never_raised(raw: bytes) -> None:
    out = shown(raw)
    assert no_control(out)
    assert shown(raw.decode("utf-8", "surrogateescape")) == out  # a file name from listdir


@EXAMPLES
@given(PRINTABLE_ASCII)
def test_printable_ascii_is_unchanged(text: str) -> None:
    assert shown(text) == text
    assert lines(text) == [text]
    assert block(text, "ivle-maint: ") == f"ivle-maint: {text}"


@EXAMPLES
@given(st.text(alphabet=st.characters(blacklist_categories=("C", "Z")) | st.just(" ")))
def test_printable_text_of_any_script_is_unchanged(text: str) -> None:
    assert shown(text) == text


@EXAMPLES
@given(TEXT, TEXT)
def test_no_line_of_a_message_starts_at_column_0_but_the_first(own: str, outside: str) -> None:
    out = block(f"{own}{outside}", "ivle-maint: ")
    first, *rest = out.split("\n")
    assert first.startswith("ivle-maint: ")
    for line in rest:
        assert line.startswith("  ") and not line.startswith("ivle-maint:")
    assert all(no_control(line) for line in out.split("\n"))


@EXAMPLES
@given(TEXT)
def test_a_listing_line_keeps_its_columns_and_forges_nothing(text: str) -> None:
    out = listing(text)
    assert not out.startswith("ivle-maint:")
    assert all(no_control(column) for column in out.split("\t"))
    assert out.count("\t") == text.count("\t")


def test_own_continuation_lines_stay_lines() -> None:
    message = joined("lock held by pid 42", "user ivle: ALTER TABLE", "since 10:00")
    assert block(message, "ivle-maint: ") == (
        "ivle-maint: lock held by pid 42\n  user ivle: ALTER TABLE\n  since 10:00")
    assert block(MaintError(message), "ivle-maint: error: ").count("\n") == 2


@EXAMPLES
@given(TEXT, TEXT)
def test_a_message_that_quotes_outside_text_is_one_line(own: str, outside: str) -> None:
    """An f-string put a file name or an SQL error into an error message
    without escaping it: the message is still one line at every sink, so
    a name holding a newline and two spaces starts no line of its own."""
    for message in (f"{own}: {outside}", MaintError(f"cannot read {outside}: {own}")):
        assert "\n" not in block(message, "ivle-maint: error: ")
        assert len(lines(message)) == 1
    several = joined(own, outside)
    assert len(lines(several)) == 2 and len(lines(MaintError(several))) == 2


def test_the_escapes_are_visible_and_name_the_character() -> None:
    assert shown("a\nivle-maint: error: forged") == "a\\nivle-maint: error: forged"
    assert shown("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert shown("abc\u202edef") == "abc\\u202edef"
    assert shown(b"raw\x9bbyte") == "raw\\x9bbyte"
    assert shown("\U000e0001") == "\\U000e0001"


@EXAMPLES
@given(TEXT)
def test_the_reporter_writes_no_control_character_and_no_forged_line(text: str) -> None:
    stream = io.StringIO()
    reporter = TerminalReporter(stream, tty=False)
    reporter.info(f"terminated pid 42: {text}")
    reporter.warn(text)
    for line in stream.getvalue().splitlines():  # splitlines: U+2028 and \x85 too
        assert line.startswith(("ivle-maint: ", "  ")) and no_control(line)


@EXAMPLES
@given(TEXT)
def test_every_log_line_is_a_records_start_or_indented(text: str) -> None:
    record = logging.LogRecord("ivle_maint", logging.INFO, __file__, 1, "cmd %s", (text,), None)
    try:
        raise ValueError(text)
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    first, *rest = out.split("\n")
    assert first.startswith("INFO ivle_maint: cmd ")
    assert all(line.startswith("  ") for line in rest)
    assert all(no_control(line) for line in out.split("\n"))


def test_ascii_letters_digits_and_punctuation_pass_whole() -> None:
    text = string.ascii_letters + string.digits + string.punctuation + " "
    assert shown(text) == text and listing(text) == text


# A line a sink may write: LINE_LIMIT characters, each escaped at most as
# \UNNNNNNNN (10), the count of what was cut, and the sink's own words.
MOST = 10 * LINE_LIMIT + 200


@settings(max_examples=40, deadline=None)
@given(piece=st.one_of(HOSTILE.filter(bool), st.text(min_size=1, max_size=3)),
       size=st.integers(LINE_LIMIT - 10, 3 * LINE_LIMIT), joined_too=st.booleans())
def test_every_sink_bounds_a_line_keeping_its_start_and_its_end(
        piece: str, size: int, joined_too: bool) -> None:
    """A message quoting a value of megabytes (a row's text in an SQL
    error): the terminal, the log and the journal each get lines of at most
    LINE_LIMIT of its characters, its start and its end kept, the count of
    what was cut between them."""
    value = (piece * (size // len(piece) + 1))[:size]
    message: object = f"step failed: {value}; services restored"
    if joined_too:
        message = joined("step failed:", value, "services restored")
    stream = io.StringIO()
    TerminalReporter(stream, tty=False).warn(message)  # type: ignore[arg-type]
    record = logging.LogRecord("ivle_maint", logging.ERROR, __file__, 1, "%s", (message,), None)
    try:
        raise MaintError(message)  # type: ignore[arg-type]
    except MaintError:
        import sys

        record.exc_info = sys.exc_info()
    log = SafeFormatter("%(levelname)s %(message)s").format(record)
    kept = _recorded(message)
    for sink, out in (("terminal", stream.getvalue()), ("log", log), ("journal", kept)):
        for line in out.split("\n"):
            assert len(line) <= MOST and no_control(line), (sink, len(line))
        assert "step failed:" in out and "services restored" in out, sink
        if len(value) > LINE_LIMIT:
            assert "characters cut]" in out, sink

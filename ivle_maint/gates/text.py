"""Text from outside, made safe before it reaches a terminal, the log or the journal.

Command lines, paths, login names, file names, SQL errors, journal
contents: anything a student or a file supplied may hold a newline that
starts a forged ``ivle-maint: error:`` line, an ANSI or OSC escape sequence
that drives the administrator's terminal, a bidi override (U+202E) that
reverses what is read, or bytes that are not UTF-8.  The rule:

1. ``shown(value)`` makes one field one visible line.  Every character
   that is not printable (str.isprintable: C0, DEL, C1, format characters
   such as bidi overrides and zero-width marks, line and paragraph
   separators, surrogates, unassigned and private-use code points, spaces
   other than U+0020) becomes a visible escape: ``\\n``, ``\\r``, ``\\t``,
   ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``.  A byte that is not UTF-8
   (bytes given, or a str decoded with surrogateescape, as os.listdir and
   sys.argv give file names) is shown as ``\\xNN``.  Printable text,
   printable ASCII included, is unchanged.  The result has no line break
   and no control character, and encodes to UTF-8.  ``shown(value,
   limit)`` also cuts it to LIMIT characters, saying how many were cut:
   a student's command line may be 2 MB, and is named in the log for
   each of hundreds of processes.

2. ``lines(message)`` is what every sink applies to a whole message: a
   message is one line, escaped as in ``shown``, however it was built
   (an f-string that put a file name, a command line or an SQL error into
   it escapes nothing itself), of no more than LINE_LIMIT characters of
   it (``bounded``: its start and its end, and the count of what was cut):
   what it quotes may be megabytes.  The one exception is a message made by
   ``joined(first, *more)``, whose parts are escaped there, one by one:
   it is shown as its first line, then each further part indented by two
   spaces.  Nothing else a message carries can break a line, so no text
   from outside ever starts a line of its own, indented or not.

3. ``listing(line)`` is the rule for one line of a listing on stdout
   (``status``, ``plan``, ``consoles list``, ``db migrate --dry-run``'s
   SQL...): as ``shown``, but a tab separates columns and is kept; and
   since ivle-maint never starts a stdout line with ``ivle-maint:``, such
   a line is indented.  A listing's own lines start at column 0 (SQL,
   JSON, tables), so on stdout a newline inside a field that was not
   escaped where it was printed still ends the line: the next line has no
   control character and cannot pass for an ``ivle-maint:`` line.  The
   fields known to come from outside are escaped where they are printed
   (``consoles list``; the journal's errors as read back).

4. ``shell_word(value)`` / ``command(*words)`` is the rule for a command
   a person is to paste (a resume line, a restore command; an ivle-maint
   command for this node by ``ivle_maint(*words)``, which also names the
   run's --config FILE): each word
   quoted so that bash reads back exactly the bytes meant, and the whole
   printable, so that rules 1 and 2 leave it as it is.  shlex.quote alone
   is not enough: a newline or ESC it quotes would then be escaped by the
   sink, and the pasted command would name another path.  Such a word is
   written as ``$'...'`` with ``\\xNN`` for each byte of each character that
   is not printable (bash, zsh and POSIX.1-2024 shells read it).

The sinks, each applying the gate itself so that nothing goes around it:
output.TerminalReporter (info, warn, progress); the log file's and the
-v stderr handler's formatter (logfile.SafeFormatter: messages by
``block``, traceback lines indented and escaped); cli.py's error and
resume lines (_say), argparse's usage errors (_Parser), a bug's traceback
(sys.excepthook) and sys.stdout itself (SafeStdout: every line by
``listing``); the journal's step summaries and errors, as recorded and as
read back (journal.py).  Under them, sys.stdout and sys.stderr escape what
the locale cannot encode (backslashreplace) instead of raising.
"""

from __future__ import annotations

import os
import shlex
import unicodedata

PREFIX = "ivle-maint:"
CONTINUATION = "\n  "
INDENT = "  "
# The most characters of one line a message gives a sink (the terminal,
# the log, the journal): a value from outside that it quotes (a row's text
# in an SQL error, a line of a file, a command's output) may be megabytes;
# the sink gets its start and its end (what the message says after the
# value: "...; upgrade abandoned, services restored"), and the count of
# what was cut between them.
LINE_LIMIT = 10_000

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        if isinstance(value, bytes):
            return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


def first_line(exc: BaseException) -> str:
    """An exception's first line (a server's error runs to DETAIL and HINT
    lines); its type's name when it says nothing."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def shown(value: object, limit: int | None = None) -> str:
    """VALUE (str, bytes, a path, anything) as one line of printable text;
    with LIMIT, no longer than that (and the count of what was cut)."""
    text = _text(value)
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        return f"{shown(text[:limit])}...[{cut} more characters]"
    if text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


class Lines(str):
    """A message of several lines, each escaped: made by joined() only."""

    __slots__ = ()


def joined(first: object, *more: object) -> Lines:
    """A message of several lines: FIRST, then each of MORE on a line of
    its own, indented; each part escaped as one line (``shown``)."""
    return Lines(CONTINUATION.join(shown(part) for part in (first, *more)))


def _joined_in(message: object) -> Lines | None:
    if isinstance(message, Lines):
        return message
    if isinstance(message, BaseException) and len(message.args) == 1 \
            and isinstance(message.args[0], Lines):  # fmt: skip
        return message.args[0]
    return None


def lines(message: object) -> list[str]:
    """A message's lines for a sink: one, unless joined() made it."""
    several = _joined_in(message)
    if several is not None:
        first, *rest = str.split(several, CONTINUATION)
        return [bounded(first), *(INDENT + bounded(part) for part in rest)]
    return [bounded(message if isinstance(message, bytes | bytearray) else _text(message))]


def bounded(value: object) -> str:
    """VALUE as ``shown``, but at most LINE_LIMIT of its characters: its
    start and its end, with the count of what was cut between them."""
    text = _text(value)
    if len(text) <= LINE_LIMIT:
        return shown(text)
    half = LINE_LIMIT // 2
    return (f"{shown(text[:half])}...[{len(text) - 2 * half} characters cut]..."
            f"{shown(text[-half:])}")


def block(message: object, head: str = "") -> str:
    """HEAD + the message's lines joined by newlines (no newline at the end)."""
    return "\n".join(f"{head}{line}" if n == 0 else line
                     for n, line in enumerate(lines(message)))


def listing(line: str) -> str:
    """One line of a listing on stdout: columns kept, nothing forged."""
    text = "\t".join(shown(column) for column in _text(line).split("\t"))
    return INDENT + text if text.startswith(PREFIX) else text


def shell_word(value: object) -> str:
    """VALUE as one shell word, printable, that bash reads back as VALUE's
    bytes (a str: UTF-8, surrogateescape for bytes that were not)."""
    text = _text(value)
    if text.isprintable():
        return shlex.quote(text)
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == "'":  # never a quote: bash's history expansion would end there
            out.append("\\x27")
        elif char.isprintable():
            out.append(char)
        else:  # each byte of it: one that was not UTF-8 stays that byte
            data = char.encode("utf-8", "surrogateescape" if 0xDC80 <= ord(char) <= 0xDCFF
                               else "surrogatepass")
            out.extend(f"\\x{byte:02x}" for byte in data)
    return "$'" + "".join(out) + "'"


def command(*words: object) -> str:
    """A command line for a person to paste: each word by shell_word."""
    return " ".join(shell_word(word) for word in words)


class _Invoked:
    """The settings file this run was given (--config FILE, made absolute)."""

    config: str | None = None


def invoked_with(config: str | None) -> None:
    """Said by cli.py once it has parsed the command line."""
    _Invoked.config = None if config is None else os.path.abspath(config)


def ivle_maint(*words: object) -> str:
    """The ivle-maint command WORDS for a person to paste on this node, as
    this run was started: with --config FILE when it was given one (pasted
    without it, the command would read the default settings: another
    node's database, maybe); each word by shell_word (a node name from the
    database, a path).  A command for another node, whose settings are not
    known here: command("ivle-maint", ...)."""
    config = _Invoked.config
    return command("ivle-maint", *(() if config is None else ("--config", config)), *words)


def width(line: str) -> int:
    """Columns a terminal gives LINE (already shown: nothing unprintable):
    a combining mark none, a wide or full-width character (CJK, emoji) two."""
    return sum(0 if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me")
               else 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in line)


def ljust(line: str, columns: int) -> str:
    """LINE padded with spaces to COLUMNS as a terminal shows it (a table's
    column: len() counts a wide name short and a combining mark long)."""
    return line + " " * max(0, columns - width(line))

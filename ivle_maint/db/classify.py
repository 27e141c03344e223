"""Decide how a migration file runs, before anything runs.

ivle-maint runs each migration in one transaction of its own that also
writes the migration's marker row, so that a failure leaves neither.  A
file therefore runs in one of three modes:

- ``transaction``: the file has no transaction statements; ivle-maint
  wraps it;
- ``own-transaction``: the file wraps itself in ``BEGIN; ... COMMIT;``;
  ivle-maint strips that pair and wraps it as above;
- ``no-transaction``: the file's header opts out with the comment
  ``-- ivle-maint: no-transaction``; its statements run one by one exactly
  as psql would run them (its own BEGIN/COMMIT included), and the marker
  row is written after the last one.  Only this mode may hold statements
  PostgreSQL refuses inside a transaction (CREATE INDEX CONCURRENTLY,
  VACUUM, ...).

Everything else (a NUL byte, a vertical tab or a BOM (_UNREAD_ALIKE), a COMMIT in
the middle, ROLLBACK, psql meta-commands,
COPY FROM STDIN, a statement that changes standard_conforming_strings (how
the strings after it read: the file is split as the session connected), a
non-transactional statement without the opt-out, a
syntax error PostgreSQL's own parser finds when pglast is installed, a
file without statements unless its header says ``-- ivle-maint: empty``)
is refused with the file name and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import pairwise

from ..errors import MaintError
from ..gates.text import shown
from . import pgparse
from .discovery import Migration, read
from .migration_class import CLASSES
from .sqlsplit import SplitError, Statement, header_comments, split, tokenize

TRANSACTION = "transaction"
OWN_TRANSACTION = "own-transaction"
NO_TRANSACTION = "no-transaction"

OPT_OUT = "-- ivle-maint: no-transaction"
EMPTY = "-- ivle-maint: empty"
_DIRECTIVE = re.compile(r"^ivle-maint\s*:\s*(.*?)\s*$", re.IGNORECASE)
_KNOWN_DIRECTIVES = {"no-transaction", "empty", *CLASSES}


@dataclass(frozen=True)
class Classified:
    """A migration read, split and classified: what would run, and how."""

    migration: Migration
    checksum: str
    mode: str
    statements: tuple[Statement, ...]  # what runs, in order
    stripped: tuple[Statement, ...] = ()  # the file's own BEGIN/COMMIT
    nontransactional: tuple[tuple[Statement, str], ...] = ()
    directives: frozenset[str] = frozenset()  # its header's, e.g. a declared class

    @property
    def key(self) -> str:
        return self.migration.key


def _words(statement: Statement) -> tuple[str, ...]:
    head = statement.head
    return head[:-1] if head and head[-1] == ";" else head


def transaction_control(statement: Statement) -> str | None:
    """'begin', 'commit', 'savepoint' or 'other' for transaction statements."""
    w = _words(statement)
    if not w:
        return None
    first, rest = w[0], w[1:]
    if first == "BEGIN" or w[:2] == ("START", "TRANSACTION"):
        plain = rest in ((), ("WORK",), ("TRANSACTION",)) or w == ("START", "TRANSACTION")
        return "begin" if plain else "other"
    if first in ("COMMIT", "END"):
        return "commit" if rest in ((), ("WORK",), ("TRANSACTION",)) else "other"
    if first in ("SAVEPOINT", "RELEASE") or (first == "ROLLBACK" and "TO" in rest[:3]):
        return "savepoint"  # fine inside ivle-maint's transaction
    if first in ("ROLLBACK", "ABORT") or w[:2] == ("PREPARE", "TRANSACTION"):
        return "other"
    return None


def _after_options(w: tuple[str, ...], start: int) -> int:
    """Index past a parenthesised option list at w[start], if any."""
    if start < len(w) and w[start] == "(":
        try:
            return w.index(")", start) + 1
        except ValueError:
            return len(w)
    return start


def nontransactional(statement: Statement, server_version: int | None = None) -> str | None:
    """What makes PostgreSQL refuse this statement in a transaction, or None."""
    w = _words(statement)
    if not w:
        return None
    two = w[:2]
    if w[0] == "VACUUM":
        return "VACUUM"
    if w[0] == "CLUSTER" and w[_after_options(w, 1) :] in ((), ("VERBOSE",)):
        return "CLUSTER without a table"
    index_at = 3 if w[1:2] == ("UNIQUE",) else 2
    if w[index_at - 1 : index_at + 1] == ("INDEX", "CONCURRENTLY") and w[0] == "CREATE":
        return "CREATE INDEX CONCURRENTLY"
    if w[:3] == ("DROP", "INDEX", "CONCURRENTLY"):
        return "DROP INDEX CONCURRENTLY"
    if w[0] == "REINDEX":
        what = w[_after_options(w, 1) :]
        if "CONCURRENTLY" in what[:2]:
            return "REINDEX ... CONCURRENTLY"
        if what[:1] in (("SCHEMA",), ("DATABASE",), ("SYSTEM",)):
            return f"REINDEX {what[0]}"
    if two in (("CREATE", "DATABASE"), ("DROP", "DATABASE")):
        return " ".join(two)
    if two == ("ALTER", "DATABASE") and ("SET", "TABLESPACE") in pairwise(w):
        return "ALTER DATABASE ... SET TABLESPACE"
    if two in (("CREATE", "TABLESPACE"), ("DROP", "TABLESPACE"), ("ALTER", "SYSTEM")):
        return " ".join(two)
    if two in (("CREATE", "SUBSCRIPTION"), ("DROP", "SUBSCRIPTION")):
        return " ".join(two)
    if two == ("ALTER", "SUBSCRIPTION") and "REFRESH" in w:
        return "ALTER SUBSCRIPTION ... REFRESH"
    if two == ("DISCARD", "ALL"):
        return "DISCARD ALL"
    if two == ("ALTER", "TABLE") and "DETACH" in w and "CONCURRENTLY" in w:
        return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"
    if (
        two == ("ALTER", "TYPE")
        and ("ADD", "VALUE") in pairwise(w)
        and server_version is not None
        and server_version < 120000
    ):
        return "ALTER TYPE ... ADD VALUE (before PostgreSQL 12)"
    return None


# Characters that are not read alike by what reads a migration: PostgreSQL's
# client sends no NUL (the statement would end there, mid-run); a vertical
# tab is whitespace to PostgreSQL 16's scanner (and to newer pglast) but part
# of a token to 15's; a byte-order mark is a name's character to the server
# and not to every pglast.  What ran would depend on which read the file.
_UNREAD_ALIKE = {
    "\x00": "a NUL byte: not SQL text (PostgreSQL takes no NUL)",
    "\x0b": "a vertical tab: PostgreSQL's versions read it differently; remove it",
    "\ufeff": "a byte-order mark (U+FEFF): PostgreSQL reads it as part of a name; remove it",
}


# The setting that says whether a backslash in a plain '...' string escapes
# the next character.  The file is split (and parsed) with the value the
# session had when it connected; a statement that changes it makes the
# server read every later string otherwise, so a ';' one reads inside a
# string the other reads as the end of a statement: `SELECT 'a\'';
# COMMIT; ...` was one statement to the tokenizer, three to the server,
# whose COMMIT committed half the migration, unrecorded.
_STRINGS_SETTING = "standard_conforming_strings"
_SETTING_NAMED = re.compile(rf"(?<![\w$]){_STRINGS_SETTING}(?![\w$])", re.IGNORECASE)
_STRINGS_CHANGED = (f"changes {_STRINGS_SETTING}, how PostgreSQL reads a backslash in the "
                    f"strings that follow, which ivle-maint cannot split the file by: remove it "
                    f"(a string that needs backslash escapes can be written E'...')")


def _changes_string_reading(statement: Statement, standard: bool) -> bool:
    """Does STATEMENT name standard_conforming_strings (SET, RESET, a
    set_config or a DO block that does), outside a comment?"""
    if not _SETTING_NAMED.search(statement.text):
        return False
    for token in tokenize(statement.text, standard_strings=standard):
        if token.kind == "word" and token.text.lower() == _STRINGS_SETTING:
            return True
        if token.kind == "quoted" and token.text == f'"{_STRINGS_SETTING}"':
            return True
        if token.kind in ("string", "dollar") and _SETTING_NAMED.search(token.text):
            return True
    return False


def _fail(migration: Migration, line: int | None, reason: str) -> MaintError:
    where = f"line {line}: " if line else ""
    return MaintError(f"{where}{reason}", path=migration.path)


def _directives(migration: Migration, text: str) -> set[str]:
    found: set[str] = set()
    for line, comment in header_comments(text):
        match = _DIRECTIVE.match(comment)
        if match:
            value = match.group(1).lower()
            if value not in _KNOWN_DIRECTIVES:
                names = (*CLASSES, "no-transaction", "empty")
                known = ", ".join(f"-- ivle-maint: {d}" for d in names)
                raise _fail(migration, line, f"unknown directive {comment!r} (known: {known})")
            if value in CLASSES and found & set(CLASSES):
                raise _fail(migration, line, f"a second class directive {comment!r}")
            found.add(value)
    return found


def classify(
    migration: Migration,
    *,
    server_version: int | None = None,
    standard_strings: bool = True,
) -> Classified:
    """Read, split and classify one file; a MaintError says what is wrong, where."""
    data, digest = read(migration)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(migration, None, f"not UTF-8 text (byte {exc.start})") from None
    for odd, unread in _UNREAD_ALIKE.items():
        if odd in text:
            line = text.count("\n", 0, text.index(odd)) + 1
            raise _fail(migration, line, unread)
    try:
        statements = split(text, standard_strings=standard_strings)
    except SplitError as exc:
        raise _fail(migration, exc.line, exc.reason) from None
    for s in statements:
        if s.meta:
            raise _fail(migration, s.line, f"psql meta-command {s.head[0]} is not supported")
        if _changes_string_reading(s, standard_strings):
            raise _fail(migration, s.line, _STRINGS_CHANGED)
    directives = _directives(migration, text)
    _check_empty(migration, statements, "empty" in directives)
    if standard_strings:  # pglast's lexer knows standard strings only
        problem = pgparse.check(text, [(s.line, s.text) for s in statements])
        if problem is not None:
            # Its message quotes the file's token, a line break or control included.
            raise _fail(migration, problem.line,
                        f"{shown(problem.message)} (PostgreSQL's parser)")
        _check_split(migration, statements)
    opted_out = "no-transaction" in directives
    refused = tuple(
        (s, why) for s in statements if (why := nontransactional(s, server_version)) is not None
    )
    if opted_out:
        return Classified(migration, digest, NO_TRANSACTION, tuple(statements), (), refused,
                          frozenset(directives))
    if refused:
        s, why = refused[0]
        raise _fail(
            migration,
            s.line,
            f"{why} cannot run inside a transaction; to run this file statement by statement "
            f"without rollback on failure, put '{OPT_OUT}' in its header",
        )
    return replace(_wrap(migration, digest, statements), directives=frozenset(directives))


def _check_split(migration: Migration, statements: list[Statement]) -> None:
    """Each statement is one to PostgreSQL's parser too.  The splitter keeps
    psql's rule that a ';' inside CREATE FUNCTION ... BEGIN ... END does not
    end the statement, and reads any word BEGIN there as that block (psql
    does): `CREATE FUNCTION begin() ...; ALTER ...; COMMIT; ...` was one
    statement to it, every later one to the server, whose COMMIT committed
    the migration's first half, unrecorded, its transaction control unseen."""
    for s in statements:
        found = pgparse.count(s.text)
        if found is not None and found > 1:
            raise _fail(migration, s.line,
                        f"PostgreSQL's parser reads {found} statements where ivle-maint, as "
                        f"psql, reads one (a word BEGIN, CASE or END in a CREATE FUNCTION or "
                        f"PROCEDURE before its body, such as a function named begin?): rename "
                        f"it or quote it (\"begin\")")


def _check_empty(migration: Migration, statements: list[Statement], marked: bool) -> None:
    """An empty file would be recorded as applied and never run: refuse it
    unless its header says it is meant to be empty."""
    if not statements and not marked:
        raise _fail(
            migration, None,
            f"holds no SQL statement; it would be recorded as applied without changing "
            f"anything: if that is intended, put '{EMPTY}' in its header",
        )  # fmt: skip
    if statements and marked:
        raise _fail(migration, statements[0].line,
                    f"its header says '{EMPTY}' but it holds {len(statements)} statement(s)")


def _wrap(migration: Migration, digest: str, statements: list[Statement]) -> Classified:
    """Strip one enclosing BEGIN ... COMMIT; refuse any other arrangement."""
    control = [(s, kind) for s in statements if (kind := transaction_control(s)) is not None]
    for s, kind in control:
        if kind == "other":
            raise _fail(
                migration,
                s.line,
                f"{' '.join(_words(s))} is not supported: ivle-maint runs each migration "
                "in one transaction of its own",
            )
    control = [(s, kind) for s, kind in control if kind != "savepoint"]
    if not control:
        return Classified(migration, digest, TRANSACTION, tuple(statements))
    kinds = [kind for _, kind in control]
    if kinds == ["begin", "commit"]:
        begin, commit = control[0][0], control[1][0]
        body = tuple(s for s in statements if s is not begin and s is not commit)
        return Classified(migration, digest, OWN_TRANSACTION, body, (begin, commit))
    if kinds == ["begin"]:
        raise _fail(migration, control[0][0].line, "BEGIN without a matching COMMIT")
    # A second block, or a COMMIT first: the file commits part-way through.
    s = control[1][0] if kinds[0] == "begin" else control[0][0]
    raise _fail(
        migration,
        s.line,
        f"{_words(s)[0]} part-way through the file: ivle-maint runs each migration as one "
        f"transaction; split the file, or put '{OPT_OUT}' in its header",
    )

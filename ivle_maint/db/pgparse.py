"""Syntax-check SQL with PostgreSQL's own parser (pglast), offline.

pglast embeds the server's grammar (libpg_query; Debian's python3-pglast
has PostgreSQL 15's, the newest PyPI release a newer one), so a typo in a
pending migration is found in the preflight, while the site is up,
without sending anything to the live database.  It checks syntax only:
names, types and privileges are the server's business when the file runs.

Without pglast (it is only recommended) available() is False and the
tokenizer's checks in sqlsplit/classify are all there is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_parse: Any = None
_error: Any = None


def available() -> bool:
    """pglast's parser loads (import cost paid once)."""
    global _parse, _error
    if _parse is None:
        try:  # here, not at the top: pglast is optional, and costs ~20 ms to load
            from pglast.parser import ParseError, parse_sql
        except ImportError:
            _parse = False
            return False
        _parse, _error = parse_sql, ParseError
    return bool(_parse)


@dataclass(frozen=True)
class SyntaxProblem:
    line: int | None  # in the text given, 1-based, when known
    message: str  # the parser's, e.g. 'syntax error at or near "SELEC"'


def _first_error(text: str) -> tuple[str, int | None] | None:
    try:
        _parse(text)
    except _error as exc:
        args = exc.args
        message = str(args[0]) if args else str(exc)
        offset = args[1] if len(args) > 1 and isinstance(args[1], int) else None
        return message, offset
    except UnicodeDecodeError:  # pglast cut its message inside a character
        return _UNREADABLE, None
    return None


# What pglast says when its own message is not UTF-8 ("SELECT 1<BOM>;" gives
# one cut inside the character it quotes): a refusal all the same.
_UNREADABLE = "syntax error (PostgreSQL's parser refused it; its message was not readable)"


def check(text: str, statements: Sequence[tuple[int, str]] = ()) -> SyntaxProblem | None:
    """The first syntax error in text, or None (also when pglast is missing).

    statements: (line, text) of each statement, to place an error in a file
    that is not ASCII, where pglast's position is not reliable.
    """
    if not available():
        return None
    found = _first_error(text)
    if found is None:
        return None
    message, offset = found
    if text.isascii() and offset is not None and offset >= 0:
        return SyntaxProblem(text[:offset].count("\n") + 1, message)
    for line, statement in statements:
        if _first_error(statement) is not None:
            return SyntaxProblem(line, message)
    return SyntaxProblem(None, message)


def count(text: str) -> int | None:
    """How many statements PostgreSQL's parser reads in TEXT; None when
    pglast is missing or refuses it (check() says why)."""
    if not available():
        return None
    try:
        return len(_parse(text))
    except (_error, UnicodeDecodeError):
        return None


class ParseFailure(Exception):
    """The parser refused the text (its message), or pglast is missing."""


def parse(text: str) -> tuple[Any, ...]:
    """The statements' parse trees (pglast.ast nodes, RawStmt unwrapped)."""
    if not available():
        raise ParseFailure("pglast is not installed")
    try:
        raw = _parse(text)
    except _error as exc:
        raise ParseFailure(str(exc.args[0]) if exc.args else str(exc)) from None
    except UnicodeDecodeError:
        raise ParseFailure(_UNREADABLE) from None
    return tuple(r.stmt for r in raw)

"""Split a migration file into statements, the way psql would.

A small tokenizer, not a parser: it knows just enough of PostgreSQL's
lexical rules that a ``;`` inside a string, a quoted identifier, a
comment or a dollar-quoted function body never ends a statement:

- ``'...'`` with ``''`` escapes (and backslash escapes when the server's
  standard_conforming_strings is off), ``E'...'`` with backslash escapes;
- ``"..."`` identifiers with ``""`` escapes;
- ``-- ...`` line comments and nested ``/* ... */`` block comments;
- ``$$ ... $$`` and ``$tag$ ... $tag$`` dollar quotes;
- parentheses and SQL-standard ``BEGIN ATOMIC ... END`` function bodies,
  inside which psql does not split either (psql takes any word BEGIN in
  CREATE FUNCTION for such a body, a function named begin too; this, as
  the server, only BEGIN ATOMIC).

psql meta-commands (a backslash outside any quote) become their own
statements flagged ``meta`` so that classification can refuse them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

# How many significant tokens of a statement classification looks at.
HEAD_TOKENS = 24

_IDENT_START = r"A-Za-z_\u0080-\U0010ffff"


@functools.cache
def _identifiers() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(a word, a dollar quote's tag), compiled on the first split, not on
    import: their classes span every non-ASCII code point, milliseconds
    that `plan` with nothing pending never needs."""
    return (re.compile(rf"[{_IDENT_START}][{_IDENT_START}0-9$]*"),
            re.compile(rf"\$(?:[{_IDENT_START}][{_IDENT_START}0-9]*)?\$"))


_SPACE = re.compile(r"\s+")
_LINE_END = re.compile(r"[\n\r]")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+")


class SplitError(ValueError):
    """A file the tokenizer cannot read: an unterminated quote or comment."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class Token:
    kind: str  # word, quoted, string, dollar, comment, space, semicolon, meta, other
    text: str
    line: int

    @property
    def significant(self) -> bool:
        return self.kind not in ("space", "comment")


@dataclass(frozen=True)
class Statement:
    """One statement: its source text (``;`` included) and first tokens.

    ``head`` holds the first significant tokens, words upper-cased, so
    that classification can match ``CREATE INDEX CONCURRENTLY`` whatever
    the comments and line breaks between the words.
    """

    text: str
    line: int
    head: tuple[str, ...]
    meta: bool = False

    def starts(self, *words: str) -> bool:
        return self.head[: len(words)] == words


def _scan_quoted(text: str, pos: int, line: int, *, backslash: bool) -> int:
    """End offset of a '...' literal starting at pos (the opening quote)."""
    i = pos + 1
    n = len(text)
    while i < n:
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == "'":
            if i + 1 < n and text[i + 1] == "'":
                i += 2
                continue
            return i + 1
        i += 1
    raise SplitError(line, "unterminated quoted string")


def _scan_ident(text: str, pos: int, line: int) -> int:
    end = pos + 1
    while True:
        end = text.find('"', end)
        if end < 0:
            raise SplitError(line, "unterminated quoted identifier")
        if text.startswith('"', end + 1):
            end += 2
            continue
        return end + 1


def _scan_block_comment(text: str, pos: int, line: int) -> int:
    depth = 0
    i = pos
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise SplitError(line, "unterminated /* comment")


def _scan(text: str, pos: int, line: int, prev: Token | None, standard: bool) -> tuple[str, int]:
    """The kind and end offset of the token starting at pos."""
    c = text[pos]
    if c.isspace():
        return "space", _SPACE.match(text, pos).end()  # type: ignore[union-attr]
    if text.startswith("--", pos):
        # A line comment ends at a CR as at a LF, as PostgreSQL's scanner
        # reads it: what follows a CR is a statement the server would run.
        match = _LINE_END.search(text, pos)
        return "comment", len(text) if match is None else match.start()
    if c == "\\":  # a psql meta-command runs to the end of the line
        end = text.find("\n", pos)
        return "meta", len(text) if end < 0 else end
    if text.startswith("/*", pos):
        return "comment", _scan_block_comment(text, pos, line)
    if c == "'":
        # E'...' always takes backslash escapes; plain strings only when
        # the server runs with standard_conforming_strings off.
        e_string = prev is not None and prev.kind == "word" and prev.text in ("E", "e")
        return "string", _scan_quoted(text, pos, line, backslash=e_string or not standard)
    if c == '"':
        return "quoted", _scan_ident(text, pos, line)
    word, dollar = _identifiers()
    if c == "$" and (m := dollar.match(text, pos)):
        tag = m.group()
        close = text.find(tag, m.end())
        if close < 0:
            raise SplitError(line, f"unterminated dollar-quoted string {tag}")
        return "dollar", close + len(tag)
    if m := word.match(text, pos):
        return "word", m.end()
    if m := _NUMBER.match(text, pos):
        return "other", m.end()
    return ("semicolon" if c == ";" else "other"), pos + 1


def tokenize(text: str, *, standard_strings: bool = True) -> Iterator[Token]:
    """Yield every token of text; their texts concatenate back to text."""
    pos = 0
    line = 1
    prev: Token | None = None  # the token just before, spaces included
    while pos < len(text):
        kind, end = _scan(text, pos, line, prev, standard_strings)
        prev = Token(kind, text[pos:end], line)
        yield prev
        line += prev.text.count("\n")
        pos = end


def _head_text(token: Token) -> str:
    return token.text.upper() if token.kind == "word" else token.text


class _Block:
    """Tracks what keeps a ';' from ending the statement (psql's rules)."""

    def __init__(self) -> None:
        self.paren = 0
        self.paren_line = 0
        self.begin = 0
        self.after_begin = False  # the last significant token was the word BEGIN
        self.words: list[str] = []

    def feed(self, token: Token) -> None:
        if not token.significant:
            return
        after_begin, self.after_begin = self.after_begin, False
        if token.kind == "other" and token.text == "(":
            if self.paren == 0:
                self.paren_line = token.line
            self.paren += 1
        elif token.kind == "other" and token.text == ")":
            self.paren = max(0, self.paren - 1)
        elif token.kind == "word":
            word = token.text.upper()
            if len(self.words) < 4:
                self.words.append(word)
            if self._creates_routine() and self.paren == 0:
                # A body is BEGIN ATOMIC (psql counts any BEGIN: a function
                # named begin made the rest of the file one statement to it,
                # several to the server, a COMMIT among them).
                if word == "BEGIN":
                    self.after_begin = True
                elif (word == "ATOMIC" and after_begin) or (word == "CASE" and self.begin > 0):
                    self.begin += 1
                elif word == "END" and self.begin > 0:
                    self.begin -= 1

    def _creates_routine(self) -> bool:
        w = self.words
        kinds = ("FUNCTION", "PROCEDURE")
        if w[:1] != ["CREATE"]:
            return False
        if len(w) > 1 and w[1] in kinds:
            return True
        return w[1:3] == ["OR", "REPLACE"] and len(w) > 3 and w[3] in kinds

    @property
    def open(self) -> bool:
        return self.paren > 0 or self.begin > 0


def _is_copy_from_stdin(head: tuple[str, ...]) -> bool:
    if not head or head[0] != "COPY":
        return False
    return any(a == "FROM" and b in ("STDIN", "PSTDIN") for a, b in pairwise(head))


def split(text: str, *, standard_strings: bool = True) -> list[Statement]:
    """The statements of a file, in order; comments-only text gives []."""
    text = text.removeprefix("\ufeff")
    statements: list[Statement] = []
    parts: list[Token] = []
    block = _Block()

    def finish() -> None:
        nonlocal parts, block
        significant = [t for t in parts if t.significant]
        if significant and not (len(significant) == 1 and significant[0].kind == "semicolon"):
            while parts and parts[0].kind == "space":
                parts.pop(0)
            head = tuple(_head_text(t) for t in significant[:HEAD_TOKENS])
            if _is_copy_from_stdin(head):
                raise SplitError(
                    significant[0].line,
                    "COPY ... FROM STDIN with inline data is not supported",
                )
            body = "".join(t.text for t in parts).rstrip()
            statements.append(Statement(body, significant[0].line, head))
        parts = []
        block = _Block()

    for token in tokenize(text, standard_strings=standard_strings):
        if token.kind == "meta":
            finish()
            statements.append(Statement(token.text, token.line, (token.text.split()[0],), True))
            continue
        parts.append(token)
        block.feed(token)
        if token.kind == "semicolon" and not block.open:
            finish()
    if block.paren > 0:
        raise SplitError(block.paren_line, "unclosed parenthesis")
    finish()  # psql also sends a last statement without ';'
    return statements


def header_comments(text: str) -> list[tuple[int, str]]:
    """The ``--`` comments before the first statement, with their lines."""
    found: list[tuple[int, str]] = []
    try:
        for token in tokenize(text.removeprefix("\ufeff")):
            if token.significant:
                break
            if token.kind == "comment" and token.text.startswith("--"):
                found.append((token.line, token.text[2:].strip()))
    except SplitError:
        pass  # split() reports the fault itself
    return found

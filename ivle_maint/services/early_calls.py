"""The new postinst must not act on IVLE's services before its ivle-maint line.

dpkg runs the new version's postinst on the new code before ivle-maint's
after-phase has migrated anything.  A line above `ivle-maint hook
postinst` that restarts ivle-usrmgt-server runs the new code on the old
schema, and a server that refuses that schema stops the postinst before
ivle-maint ran (doc/package-maintainer.md, "The trap").  Such a line comes
from debhelper's default snippet at `#DEBHELPER#` above a hand-written
ivle-maint line, from a line of IVLE's own, or from debhelper's marker
left in a comment: debhelper replaces it wherever it stands, so the
snippets run there too.

The preinst sees the new postinst (dpkg extracts it beside the preinst:
release_needs.new_postinst), so its preflight decides, whatever built
the package, before anything stops:
- a stop, restart or reload of the service, or an action read from a
  variable this reading cannot follow: refused (MaintError, one line);
- a start: a warning.  It does nothing to a running server, but costs
  the outage its time, and would start a stopped one on the new code
  before the migrations.
Only dpkg's preinst can know; elsewhere there is nothing to check.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..context import UpgradeContext
from ..errors import MaintError
from ..gates.text import ivle_maint, shown

# What acts on a running server: it stops, restarts or reloads it.
ACTING = frozenset({"stop", "restart", "try-restart", "reload", "force-reload",
                    "reload-or-restart", "try-reload-or-restart", "condrestart"})
STARTS = frozenset({"start"})
# Words before a command that do not name it.
_LEADING = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}",
                      "exec", "command", "env", "sudo", "nice", "export", "local"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_PUNCTUATION = re.compile(r"[;&|()]+")
_EXPANSION = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass(frozen=True)
class EarlyCall:
    """A line of the script acting on a service before its ivle-maint line."""

    line: int
    text: str
    service: str
    action: str

    def describe(self) -> str:
        return f"line {self.line}: {shown(self.text.strip(), 120)}"


@dataclass(frozen=True)
class Order:
    """What a postinst does to SERVICES before it calls ivle-maint."""

    calls: tuple[EarlyCall, ...]
    calls_ivle_maint: bool


def _words(line: str) -> list[str]:
    """LINE's words up to a comment, unquoted.  Split with the quotes kept, so
    that only an unquoted "#" at a word's start begins a comment, as in sh."""
    lexer = shlex.shlex(line, posix=False, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        words = list(lexer)
    except ValueError:  # a quote left open to the next line: the words as written
        words = line.split()
    for index, word in enumerate(words):
        if word.startswith("#"):
            words = words[:index]
            break
    return [w.replace('"', "").replace("'", "") for w in words]


def _logical_lines(script: str) -> Iterator[tuple[int, str]]:
    """(first line's number, text) of each line, a backslash-newline joined."""
    pending, first = "", 0
    for number, line in enumerate(script.splitlines(), start=1):
        if not pending:
            first = number
        if line.endswith("\\") and not line.lstrip().startswith("#"):
            pending += line[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def _commands(words: list[str], assigned: dict[str, set[str]]) -> Iterator[list[str]]:
    """Each simple command of a line, without what precedes its name; the
    variables it assigns go into ASSIGNED, every value each was given."""
    command: list[str] = []
    for word in [*words, ";"]:
        if _PUNCTUATION.fullmatch(word):
            while command and (command[0] in _LEADING or _ASSIGNMENT.match(command[0])):
                name, _, value = command.pop(0).partition("=")
                if value or name not in _LEADING:
                    assigned.setdefault(name, set()).add(value)
            if command:
                yield command
            command = []
        else:
            command.append(word)


def _unit(name: str) -> str:
    return name.removesuffix(".service")


def _acts_on(command: list[str]) -> Iterator[tuple[str, str]]:
    """(service, action) for each service COMMAND asks to change."""
    program, args = PurePosixPath(command[0]), command[1:]
    plain = [a for a in args if not a.startswith("-")]
    if program.name in ("invoke-rc.d", "service") and len(plain) >= 2:
        yield _unit(plain[0]), plain[1]
    elif program.name in ("deb-systemd-invoke", "systemctl") and plain:
        for unit in plain[1:]:
            yield _unit(unit), plain[0]
    elif program.parent == PurePosixPath("/etc/init.d") and plain:
        yield program.name, plain[0]


def _calls_ivle_maint(command: list[str]) -> bool:
    return PurePosixPath(command[0]).name == "ivle-maint" and "hook" in command[1:]


# `name() {`, `name ()`, `function name {`: a definition runs nothing; a call does.
_FUNCTION = re.compile(r"\s*(?:function\s+([\w.-]+)\s*(?:\(\s*\))?|([A-Za-z_][\w.-]*)\s*\(\s*\))"
                       r"\s*(\{?)(.*)$")


@dataclass(frozen=True)
class _Effect:
    """What some lines do: (service, action as written) before any ivle-maint
    hook call among them, and whether they make one."""

    acts: tuple[tuple[str, str], ...] = ()
    hooks: bool = False


def _effect(lines: list[str], functions: dict[str, _Effect],
            assigned: dict[str, set[str]]) -> _Effect:
    acts: list[tuple[str, str]] = []
    for line in lines:
        for command in _commands(_words(line), assigned):
            called = functions.get(command[0])
            if called is not None:
                acts += called.acts
                if called.hooks:
                    return _Effect(tuple(acts), True)
            elif _calls_ivle_maint(command):
                return _Effect(tuple(acts), True)
            else:
                acts += _acts_on(command)
    return _Effect(tuple(acts))


def _body(lines: list[tuple[int, str]], index: int, header: re.Match[str]) -> tuple[list[str], int]:
    """A function's body lines, and the index of the line after its end."""
    opened, rest = header.group(3), header.group(4).strip()
    if opened and rest.endswith("}"):  # all on one line: `f() { a; b; }`
        return [rest[:-1]], index + 1
    body = [rest] if opened and rest else []
    index += 1
    if not opened and index < len(lines) and lines[index][1].strip() == "{":
        index += 1
    depth = 1
    while index < len(lines):
        text = lines[index][1].strip()
        index += 1
        if text.startswith("}"):
            depth -= 1
            if depth == 0:
                break
        elif text.endswith("{"):
            depth += 1
        body.append(text)
    return body, index


def order(script: str, services: Collection[str]) -> Order:
    """SCRIPT's calls on SERVICES (or their units) above its first `ivle-maint
    hook` line: every one when it has none.  A shell function's calls count
    where it is called, not where it is defined."""
    calls: list[EarlyCall] = []
    assigned: dict[str, set[str]] = {}
    functions: dict[str, _Effect] = {}
    lines = list(_logical_lines(script))
    index = 0
    while index < len(lines):
        number, line = lines[index]
        header = _FUNCTION.match(line)
        if header is not None:
            body, index = _body(lines, index, header)
            functions[header.group(1) or header.group(2)] = _effect(body, functions, assigned)
            continue
        index += 1
        effect = _effect([line], functions, assigned)
        calls += [EarlyCall(number, line, service, action) for service, written in effect.acts
                  if service in services for action in _actions(written, assigned)]
        if effect.hooks:
            return Order(tuple(calls), True)
    return Order(tuple(calls), False)


def _actions(written: str, assigned: dict[str, set[str]]) -> list[str]:
    """The actions a word may be: a variable's assigned values (debhelper's
    `$_dh_action` is restart or start), the word itself when unknown (an
    expansion this reading cannot follow counts as acting: check())."""
    expansion = _EXPANSION.fullmatch(written)
    if expansion is None:
        return [written] if written in ACTING | STARTS else []
    values = assigned.get(expansion.group(1))
    if not values:
        return [written]
    return sorted(v for v in values if v in ACTING | STARTS)


def check(ctx: UpgradeContext, postinst: bytes | None, which: str) -> None:
    """The preflight's gate (see above) for [services] WHICH, web or usrmgt,
    on the new POSTINST (None: not dpkg's preinst, or no postinst)."""
    if postinst is None:
        return
    service = str(ctx.settings["services"][which])
    found = order(postinst.decode("utf-8", "replace"), {service})
    where = f"the new postinst ({ctx.package or 'IVLE'} {ctx.new})"
    if not found.calls_ivle_maint:
        ctx.reporter.warn(f"{where} has no 'ivle-maint hook' line: unless it calls ivle-maint "
                          f"another way, nothing finishes this upgrade after its code is "
                          f"unpacked ('{ivle_maint('rerun')}' does)")
        return
    acting = [c for c in found.calls if c.action not in STARTS]
    if acting:
        call = acting[0]
        what = f"{call.action} {service}" if call.action in ACTING else \
            f"act on {service} ({call.action}, an action known only when it runs)"
        raise MaintError(
            f"{where} would {what} before its ivle-maint line "
            f"({call.describe()}): the new code would run on the old schema, before the "
            f"migrations; build IVLE with the ivle-maint line above debhelper's and "
            f"'dh_installinit --no-stop-on-upgrade --no-restart-after-upgrade' "
            f"(doc/package-maintainer.md)")
    for call in found.calls:
        ctx.reporter.warn(
            f"{where} starts {service} before its ivle-maint line ({call.describe()}): "
            f"nothing while it runs, but a stopped {service} would start on the new code "
            f"before the migrations, and the outage is longer; put the ivle-maint line "
            f"above debhelper's")

"""The ivle-maint command line: parse argv, call a command, map errors.

Only this layer prints errors and chooses exit statuses; everything below
raises MaintError with a one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, NoReturn, TextIO

from . import __version__

DESCRIPTION = """\
Automates the IVLE upgrade procedure on this node: stop the web server,
kill console processes, unmount user jails, apply database migrations,
rebuild the jail and the user jails, change the media version and start
everything again.  IVLE's Debian package calls it from its maintainer
scripts; source installs call the same commands by hand."""

EXIT_STATUSES = """\
exit status:
  0   success (or nothing to do)
  1   a step failed; the message says what, and how to resume
  2   bad input: settings, ivle.conf, the command line (dpkg's arguments
      to 'hook' too), or [paths] directories, settings, ivle.conf, init
      scripts, programs or a source tree that others could write; or a
      command that needs root (all but 'settings') run by another user
  75  another ivle-maint holds the node or migration lock; try again later
  130 interrupted (Ctrl-C, SIGINT): the running statement is cancelled, the
      step journaled as interrupted; the message says how to resume
  143 terminated (SIGTERM): the same

settings: /etc/ivle/ivle-maint.conf, --config FILE or $IVLE_MAINT_CONF
(see 'ivle-maint settings --spec'); ivle.conf: $IVLECONF/ivle.conf."""


def _command_modules(only: str | None = None) -> list[object]:
    """The command modules (commands/), or only the one named ONLY (none
    when there is no such module)."""
    from . import commands

    if only is not None:
        if not only.isidentifier() or only.startswith("_"):
            return []
        name = f"{commands.__name__}.{only}"
        try:
            return [importlib.import_module(name)]
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise  # a module it imports is missing: a broken install
            return []
    import pkgutil  # only to list them all

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    modules = [importlib.import_module(f"{commands.__name__}.{name}") for name in names]
    return sorted(modules, key=lambda m: getattr(m, "ORDER", 50))


def command_module(args: Sequence[str]) -> str | None:
    """The command module (commands/) that registers the command ARGS name,
    or None: none named (--help, --version, a usage error).  Its parser
    alone is built: `db status` loads neither the other commands' modules
    nor their parsers.  A name no module has gets the full parser (and its
    usage error)."""
    from .commands import REGISTERED_BY

    words = iter(args)
    for word in words:
        if word == "--":
            return None
        if word.startswith("--"):
            name = word.split("=", 1)[0]  # argparse takes abbreviations: --conf
            if "--help".startswith(name):
                return None
            if "=" not in word and "--config".startswith(name):
                next(words, None)  # its FILE is no command
        elif word.startswith("-"):
            if "h" in word[1:]:
                return None
        else:
            return REGISTERED_BY.get(word, word)
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full argument parser (also used to generate the man page), or
    with the commands of the command module ONLY alone (command_module)."""
    parser = _Parser(
        prog="ivle-maint",
        description=DESCRIPTION,
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ivle-maint {__version__}")
    parser.add_argument("--config", metavar="FILE", help="ivle-maint settings file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _command_modules(only) if only is not None else []
    for module in modules or _command_modules():  # an unknown name: every command
        module.register(sub)  # type: ignore[attr-defined]
    # No command given: no function.  'consoles' and 'hold' name an ACTION
    # (root.require's message quotes it); the other commands none.  brief:
    # main() leaves the cyclic collector paused while the command runs.
    parser.set_defaults(func=None, action=None, brief=False)
    return parser


def _say(head: str, message: object = "") -> None:
    """An error line on stderr, HEAD (ivle-maint's own) then MESSAGE through
    gates.text; a reader that went away changes no exit status."""
    from .gates.text import block

    try:
        print(block(message, head), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        from .output import silence

        silence(sys.stderr)


def help_width() -> int:
    """The width argparse's help is wrapped to, as its formatter takes it from
    shutil.get_terminal_size() (COLUMNS, else standard output's terminal, else
    80 columns), less its 2, found without importing shutil: argparse makes a
    formatter on every add_argument, and `db status` prints no help."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    stream = sys.__stdout__
    if columns <= 0 and stream is not None:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


# The metavars of the values that name a version (--from OLD, media set VERSION).
VERSION_METAVARS = frozenset({"VERSION", "OLD", "NEW"})


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors quote the command line: through gates.text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kind, width = kwargs.get("formatter_class", argparse.HelpFormatter), help_width()
        kwargs["formatter_class"] = lambda prog: kind(prog, width=width)
        super().__init__(*args, **kwargs)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        """The gate of every value given on the command line, each option's
        and operand's (not the defaults), before argparse converts it: a
        version must be one (journals, logs and printed commands are named
        after it), and no other value may be empty (an empty path is the
        working directory, an empty --expect no check at all).  dpkg's own
        arguments to 'hook' may be empty (postinst configure '' on a first
        install): hooks.py checks its ARGS.  (PARSER: a command's words,
        which its own parser checks.)"""
        if action.nargs not in (argparse.REMAINDER, argparse.PARSER):
            # Named as the commands name theirs: 'upgrade --to', 'media set'.
            named = " ".join([*self.prog.split()[1:], *action.option_strings[-1:]])
            values = list(arg_strings)
            if "--" in values:  # `media set -- -x`: argparse drops the first '--' too
                values.remove("--")
            for value in values:
                if action.metavar in VERSION_METAVARS:
                    if self.prog.split()[1:] != ["hook"]:  # hooks.py names dpkg's after the script
                        from .commands import checked_version

                        checked_version(value, named)
                elif value == "":
                    from .errors import UsageError

                    raise UsageError(f"{named}: an empty value; give one, or leave the option out"
                                     if action.option_strings else f"{named}: an empty "
                                     f"{action.metavar or action.dest.upper()}; give one")
            self._once(action, named, values)
        return super()._get_values(action, arg_strings)

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self._given: dict[argparse.Action, list[str]] = {}  # this parse's, for _once
        return super().parse_known_args(*args, **kwargs)

    def _once(self, action: argparse.Action, named: str, values: list[str]) -> None:
        """An option that keeps one value given twice (`--to 1.1 ... --to 1.2`,
        a script's option after an alias's) is refused: argparse would keep
        the last one silently, which may not be the one meant."""
        if type(action) is not argparse._StoreAction or not action.option_strings:
            return  # --accept-class KEY... collects; an operand comes once
        given = getattr(self, "_given", {})
        if action in given:
            from .errors import UsageError

            first, then = (" ".join(v) for v in (given[action], values))
            raise UsageError(f"{named}: given twice ({first!r}, then {then!r}); give it once")
        given[action] = values

    def error(self, message: str) -> NoReturn:
        with contextlib.suppress(OSError, ValueError):
            self.print_usage(sys.stderr)
        _say(f"{self.prog}: error: ", message)
        self.exit(2)


class SafeStdout:
    """sys.stdout of the command: every line through gates.text.listing.

    Listings (`status`, `plan`, `consoles list`...) carry text from
    outside: each line has its control characters escaped and never starts
    with `ivle-maint:`.  And `ivle-maint status | head -1`: a reader that
    went away (EPIPE) loses the rest of the listing; it must not turn into
    an error line or change the exit status.  Other failures (a full disk
    under `> FILE`) still raise: that output was wanted.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        from .gates.text import listing

        self._pending += text
        *done, self._pending = self._pending.split("\n")
        if done:
            self._put("".join(listing(line) + "\n" for line in done))
        return len(text)

    def flush(self) -> None:
        from .gates.text import listing

        if self._pending:
            pending, self._pending = self._pending, ""
            self._put(listing(pending))
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()
        except OSError as exc:
            raise _named(exc) from None

    def _put(self, text: str) -> None:
        try:
            self._stream.write(text)
        except BrokenPipeError:
            self._gone()
        except OSError as exc:
            raise _named(exc) from None

    def _gone(self) -> None:
        from .output import silence

        silence(self._stream)  # the interpreter's last flush succeeds too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _named(exc: OSError) -> OSError:
    """EXC, saying it was standard output that failed (os_error_line shows it)."""
    if exc.filename is None:
        exc.filename = "standard output"
    return exc


def _bug(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook: a bug's traceback, its lines indented and escaped
    (gates.text) as the log's: the exception's message may quote a file."""
    import traceback

    from .gates.text import INDENT, bounded

    text = "".join(traceback.format_exception(kind, exc, tb)).rstrip("\n")
    lines = [INDENT + bounded(line) for line in text.split("\n")]
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write("\n".join(["ivle-maint: internal error (a bug):", *lines]) + "\n")
        sys.stderr.flush()


def _standard_streams() -> None:
    """Descriptors 0, 1 and 2 open, before ivle-maint opens any file.

    Started with one closed (`ivle-maint ... >&-`), the next file opened
    (the lock, the log, a dump) would get its number, and every print or
    child's output would go into it; Python then also has no sys.stdout.
    A closed one is opened on /dev/null: its output is dropped.
    """
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
    for stream in (sys.stdout, sys.stderr):
        # A name that is not valid in the locale's encoding is escaped, not
        # a traceback (gates.text leaves printable non-ASCII text as it is).
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


class _Run:
    """What main() learnt of the command it ran."""

    hook = False  # dpkg's hook: ends without the interpreter's teardown
    config: str | None = None  # --config FILE: every resume line must name it too


# An ivle-maint command within a resume line (one may name two: "..., then
# run the upgrade again: ivle-maint upgrade ...").
_COMMAND = re.compile(r"(?<![^\s(`])ivle-maint (?=[a-z])")  # a word of its own
# A word quoted as gates.text.shell_word quotes one ('...' with '"'"' for a
# quote, or $'...'): a path, which may hold "ivle-maint db" itself.  Quoted
# words begin a word; an apostrophe within prose ("node's") begins none.
_SEGMENT = r'''\$'(?:[^'\\]|\\.)*'|'[^']*'|"(?:[^"\\]|\\.)*"'''
_QUOTED_WORD = re.compile(rf"(?<!\S)(?:{_SEGMENT})(?:{_SEGMENT}|[^\s'\"])*")


def resume_line(resume: str, config: str | None) -> str:
    """RESUME as this run was invoked: with --config FILE (absolute) in each
    ivle-maint command in it when the run was given one.  Pasted without
    it, the command would read the default settings: another node's
    database, maybe."""
    if config is None:
        return resume
    from .gates.text import shell_word

    option = f"ivle-maint --config {shell_word(os.path.abspath(config))} "
    out, start = [], 0
    for quoted in _QUOTED_WORD.finditer(resume):  # left as they are
        out += [_COMMAND.sub(lambda _match: option, resume[start:quoted.start()]),
                quoted.group()]
        start = quoted.end()
    return "".join([*out, _COMMAND.sub(lambda _match: option, resume[start:])])


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:3] == ["hook", "postinst"]:
        from . import warm  # the preinst's worker has the after-phase loaded

        if warm.wanted(sys.argv[1:]):
            handed = warm.hand_over(sys.argv[1:])
            if handed is not None:
                os._exit(handed)  # its output is written: nothing of ours to flush
    code = _ran(argv)
    if argv is None and _Run.hook:
        _end_now(code)
    return code


def run_command() -> int:
    """The command of sys.argv, as main() runs it, without its exit (warm.py)."""
    return _ran(None)


def _ran(argv: Sequence[str] | None) -> int:
    """_main(ARGV); then its --config is forgotten: what runs next in this
    process (the warm worker's next command, a test) was not given it."""
    try:
        return _main(argv)
    finally:
        _given_config(None)


def report_bug(exc: BaseException) -> None:
    """An exception that escaped a command, told as sys.excepthook tells it."""
    _bug(type(exc), exc, exc.__traceback__)


def flush_all() -> None:
    """What the log and the streams hold, written."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _end_now(code: int) -> None:
    """A dpkg hook, its work done and said: exit without tearing down some
    250 modules (45 ms here), which dpkg would wait for with the web server
    down.  Nothing of ivle-maint's runs at exit (no atexit, no thread left):
    what the log and the streams hold is written first."""
    flush_all()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    """The command, and the one gate of what ivle-maint writes to a person:
    its own output (--help, --version, a listing) that cannot be written
    (a full disk under `> FILE`, EIO) is one error line and exit status 1,
    before, during or after the command; never a traceback."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # buffered output fails here, not in the interpreter's exit
    except OSError as exc:
        _say("ivle-maint: error: ", os_error_line(exc))
        return 1
    return code


def _run(argv: Sequence[str] | None) -> int:
    if argv is None:  # the command itself
        # What loading ivle_maint and its libraries makes lives on (modules,
        # classes, functions): the cyclic collector would only walk it again
        # and again, some 6 ms of `db status`.  Paused until the command
        # acts, and left paused by a brief one (args.brief: db status, plan,
        # reads whose garbage is freed by reference counting as it goes).
        gc.disable()
        _standard_streams()
        sys.excepthook = _bug
        logging.raiseExceptions = False  # a handler that fails prints no traceback
        if not isinstance(sys.stdout, SafeStdout):
            sys.stdout = SafeStdout(sys.stdout)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list == ["--version"]:  # answered before any other import
        print(f"ivle-maint {__version__}")
        return 0
    from .commands import Context
    from .errors import Interrupted, MaintError
    from .gates import environment, root, waits

    if argv is None:  # the command itself: its environment, locale and umask pinned
        environment.pin_process()
    parser = build_parser(command_module(args_list))
    try:
        args = parser.parse_args(args_list)
    except MaintError as exc:  # a value _Parser refused: one line, exit 2
        _say("ivle-maint: error: ", exc)
        return exc.exit_status
    _Run.hook = argv is None and args.command == "hook"
    _given_config(args.config)
    _log_to_stderr(verbose=args.verbose)
    if args.func is None:
        with contextlib.suppress(OSError, ValueError):  # a usage error, however told
            parser.print_help(sys.stderr)
        return 2
    try:
        action = args.action
        root.require(args.command, f"{args.command} {action}" if isinstance(action, str) else None)
        if not args.brief:
            gc.enable()
        with waits.signals():  # SIGTERM unwinds as Terminated, like Ctrl-C
            return int(args.func(Context(args)) or 0)
    except MaintError as exc:
        interrupt = waits.received()  # the error an interruption caused
        if interrupt is not None:
            return _interrupted(interrupt, exc.resume)
        _say("ivle-maint: error: ", exc)
        if exc.resume:
            _say("ivle-maint: resume with: ", resume_line(exc.resume, _Run.config))
        return exc.exit_status
    except Interrupted as exc:  # within an upgrade: the step is journaled as interrupted
        return _interrupted(exc.signal, exc.resume)
    except (KeyboardInterrupt, waits.Terminated) as exc:
        return _interrupted(exc, None)
    except OSError as exc:
        # A file system refusing (read-only, full, permission): one line, not
        # a traceback; the log file (and -v) keeps the traceback.
        logging.getLogger(__name__).debug("OSError", exc_info=True)
        interrupt = waits.received()
        if interrupt is not None:
            return _interrupted(interrupt, None)
        _say("ivle-maint: error: ", os_error_line(exc))
        return 1
    except ImportError as exc:
        # A broken install (a bad python3-psutil, say): one line, not a
        # traceback.  An upgrade loads every step's library before any step
        # (upgrade.py imports the procedure, upgrade.preload what the steps
        # load only to act), so this comes with the site up.
        logging.getLogger(__name__).debug("ImportError", exc_info=True)
        _say("ivle-maint: error: ", f"Python module {failed_module(exc)} does not load: {exc}")
        return 1


def _given_config(config: str | None) -> None:
    """--config FILE (or None): every ivle-maint command the run prints names it."""
    from .gates.text import invoked_with

    _Run.config = config
    invoked_with(config)


def _log_to_stderr(*, verbose: bool) -> None:
    """Diagnostics on stderr only with -v: the reporter already says what
    a person needs, and the run's log file gets everything."""
    from .logformat import SAID, SafeFormatter

    handler = logging.StreamHandler()
    handler.setLevel(logging.DEBUG if verbose else logging.ERROR)
    handler.setFormatter(SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(lambda record: not getattr(record, SAID, False))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])


def _interrupted(exc: BaseException, resume: str | None) -> int:
    """Ctrl-C or SIGTERM: one line, how to resume, 130 or 143."""
    from .gates import waits

    _say("ivle-maint: ", waits.describe(exc))
    if resume:
        _say("ivle-maint: resume with: ", resume_line(resume, _Run.config))
    return waits.exit_status(exc)


def os_error_line(exc: OSError) -> str:
    """'PATH: Read-only file system' (both paths of a rename), or the message."""
    why = exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(str(p) for p in paths)
    return f"{where}: {why}" if where else why  # _say escapes it


def failed_module(exc: ImportError) -> str:
    """The module that is missing, or the one whose loading raised EXC."""
    if exc.name:
        return exc.name
    tb: TracebackType | None = exc.__traceback__
    name = "?"
    while tb is not None:
        name = str(tb.tb_frame.f_globals.get("__name__", name))
        tb = tb.tb_next
    return name


if __name__ == "__main__":
    sys.exit(main())

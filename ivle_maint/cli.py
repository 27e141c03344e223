"""The ivle-maint command line: parse argv, call a command, map errors.

Only this layer prints errors and chooses exit statuses; everything below
raises MaintError with a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TextIO

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
      to 'hook' too), or [paths] directories, settings, ivle.conf or init
      scripts that others could write
  75  another ivle-maint holds the node or migration lock; try again later
  130 interrupted (Ctrl-C, SIGINT): the running statement is cancelled, the
      step journaled as interrupted; the message says how to resume
  143 terminated (SIGTERM): the same

settings: /etc/ivle/ivle-maint.conf, --config FILE or $IVLE_MAINT_CONF
(see 'ivle-maint settings --spec'); ivle.conf: $IVLECONF/ivle.conf."""


def _command_modules() -> list[object]:
    from . import commands

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    modules = [importlib.import_module(f"{commands.__name__}.{name}") for name in names]
    return sorted(modules, key=lambda m: getattr(m, "ORDER", 50))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to generate the man page)."""
    parser = argparse.ArgumentParser(
        prog="ivle-maint",
        description=DESCRIPTION,
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ivle-maint {__version__}")
    parser.add_argument("--config", metavar="FILE", help="ivle-maint settings file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(sub)  # type: ignore[attr-defined]
    return parser


def _say(line: str) -> None:
    """The error line on stderr; a reader that went away changes no exit status."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        from .output import silence

        silence(sys.stderr)


class _StdoutReaderMayLeave:
    """sys.stdout for `ivle-maint status | head -1`.

    A reader that went away (EPIPE) loses the rest of the listing; it must
    not turn into an error line or change the exit status.  Other failures
    (a full disk under `> FILE`) still raise: that output was wanted.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def _gone(self) -> None:
        from .output import silence

        silence(self._stream)  # the interpreter's last flush succeeds too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and not isinstance(sys.stdout, _StdoutReaderMayLeave):  # the command itself
        sys.stdout = _StdoutReaderMayLeave(sys.stdout)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list == ["--version"]:  # answered before any other import
        print(f"ivle-maint {__version__}")
        return 0
    from .commands import Context
    from .errors import MaintError
    from .gates import environment, waits

    if argv is None:  # the command itself: its environment, locale and umask pinned
        environment.pin_process()
    parser = build_parser()
    args = parser.parse_args(args_list)
    # Diagnostics on stderr only with -v: the reporter already says what
    # a person needs, and the run's log file gets everything.
    handler = logging.StreamHandler()
    handler.setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        handlers=[handler])
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        with waits.signals():  # SIGTERM unwinds as Terminated, like Ctrl-C
            return int(args.func(Context(args)) or 0)
    except MaintError as exc:
        interrupt = waits.received()  # the error an interruption caused
        if interrupt is not None:
            return _interrupted(interrupt, exc.resume)
        _say(f"ivle-maint: error: {exc}")
        if exc.resume:
            _say(f"ivle-maint: resume with: {exc.resume}")
        return exc.exit_status
    except (KeyboardInterrupt, waits.Terminated) as exc:
        return _interrupted(exc, getattr(exc, "resume", None))
    except OSError as exc:
        # A file system refusing (read-only, full, permission): one line, not
        # a traceback; the log file (and -v) keeps the traceback.
        logging.getLogger(__name__).debug("OSError", exc_info=True)
        interrupt = waits.received()
        if interrupt is not None:
            return _interrupted(interrupt, None)
        _say(f"ivle-maint: error: {os_error_line(exc)}")
        return 1
    except ImportError as exc:
        # A broken install (a bad python3-psutil, say): one line, not a
        # traceback.  An upgrade loads every step's library before any step
        # (upgrade.py imports the procedure), so this comes with the site up.
        logging.getLogger(__name__).debug("ImportError", exc_info=True)
        _say(f"ivle-maint: error: Python module {failed_module(exc)} does not load: {exc}")
        return 1


def _interrupted(exc: BaseException, resume: str | None) -> int:
    """Ctrl-C or SIGTERM: one line, how to resume, 130 or 143."""
    from .gates import waits

    _say(f"ivle-maint: {waits.describe(exc)}")
    if resume:
        _say(f"ivle-maint: resume with: {resume}")
    return waits.exit_status(exc)


def os_error_line(exc: OSError) -> str:
    """'PATH: Read-only file system' (both paths of a rename), or the message."""
    why = exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(str(p) for p in paths)
    text = f"{where}: {why}" if where else why
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


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

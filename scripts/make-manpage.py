#!/usr/bin/python3
"""Write ivle-maint(1) from the real argument parser (ivle_maint.cli.build_parser).

    scripts/make-manpage.py [--output FILE] [--date YYYY-MM-DD]

Every command and subcommand, its synopsis, description and options come
from argparse, so the page cannot drift from `ivle-maint --help`.  The exit
statuses and files come from the parser's epilog.  The date defaults to
$SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog) so the
build is reproducible.  Run from the source tree; standard library only
(plus what importing ivle_maint.cli needs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ivle_maint import __version__
from ivle_maint.cli import build_parser

PROG = "ivle-maint"


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, leading control chars."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def para(text: str) -> list[str]:
    """Paragraphs of running text; a blank line starts a new one."""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        lines = [esc(line.strip()) for line in block.splitlines() if line.strip()]
        if lines:
            out += [".PP", *lines]
    return out


def help_text(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": parser.prog}
    return text


def metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def arg_form(action: argparse.Action) -> str:
    """How the argument after an option (or a positional) is written."""
    if action.nargs == 0:
        return ""
    var = f"\\fI{esc(metavar(action))}\\fR"
    forms = {
        None: var,
        "?": f"[{var}]",
        "*": f"[{var} ...]",
        "+": f"{var} [{var} ...]",
        argparse.REMAINDER: f"[{var} ...]",
    }
    if action.nargs in forms:
        return forms[action.nargs]
    return " ".join([var] * int(action.nargs))  # type: ignore[arg-type]


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in parser._actions
        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
    ]


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in declaration order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def synopsis(words: str, parser: argparse.ArgumentParser) -> str:
    parts = [f"\\fB{esc(words)}\\fR"]
    # argparse's order: options first, then positionals and commands.
    actions = sorted(visible(parser), key=lambda a: not a.option_strings)
    for action in actions:
        if isinstance(action, argparse._SubParsersAction):
            parts.append("\\fICOMMAND\\fR [\\fIARGS\\fR ...]")
        elif action.option_strings:
            form = " ".join(filter(None, [f"\\fB{esc(action.option_strings[-1])}\\fR",
                                          arg_form(action)]))
            parts.append(form if action.required else f"[{form}]")
        else:
            parts.append(arg_form(action))
    return " ".join(parts)


def option_list(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in visible(parser):
        if isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            arg = arg_form(action)
            head = ", ".join(
                f"\\fB{esc(opt)}\\fR" + (f" {arg}" if arg else "") for opt in action.option_strings
            )
        else:
            head = arg_form(action)
        text = help_text(action, parser)
        if not text and action.choices is not None:
            text = "one of: " + ", ".join(map(str, action.choices))
        out += [".TP", head, esc(text) or "\\&"]
    return out


def command_sections(words: str, parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for name, short, sub in subcommands(parser):
        full = f"{words} {name}"
        out += [f'.SS "{esc(full.removeprefix(PROG + " "))}"', synopsis(full, sub)]
        out += para(sub.description or short)
        out += option_list(sub)
        out += command_sections(full, sub)
    return out


def epilog_sections(epilog: str) -> tuple[list[tuple[str, str]], str]:
    """The 'exit status:' table of the epilog, and the rest of its text."""
    statuses: list[tuple[str, str]] = []
    rest: list[str] = []
    in_table = False
    for line in epilog.splitlines():
        if line.strip().lower() == "exit status:":
            in_table = True
        elif in_table and line.strip():
            code, _, meaning = line.strip().partition(" ")
            statuses.append((code, meaning.strip()))
        else:
            in_table = False
            rest.append(line)
    return statuses, "\n".join(rest)


def manpage(date: str) -> str:
    parser = build_parser()
    statuses, files = epilog_sections(parser.epilog or "")
    first = (parser.description or "").split(".")[0].split(":")[0].strip()
    out = [
        f'.TH IVLE\\-MAINT 1 "{date}" "ivle-maint {__version__}" "IVLE administration"',
        ".SH NAME",
        f"ivle\\-maint \\- {esc(first[0].lower() + first[1:] if first else 'IVLE upgrades')}",
        ".SH SYNOPSIS",
        synopsis(PROG, parser),
        ".SH DESCRIPTION",
        *para(parser.description or ""),
        ".SH OPTIONS",
        *option_list(parser),
        ".TP",
        "\\fB\\-h\\fR, \\fB\\-\\-help\\fR",
        "Show a summary of the options (also after any command) and exit.",
        ".SH COMMANDS",
        *command_sections(PROG, parser),
        ".SH EXIT STATUS",
    ]
    for code, meaning in statuses:
        out += [".TP", f"\\fB{esc(code)}\\fR", esc(meaning)]
    out += [".SH FILES", *para(files)]
    out += [
        ".PP",
        "\\fI/usr/share/ivle\\-maint/maintscript/\\fR holds the lines IVLE's own",
        "preinst, postinst, prerm and postrm add to call \\fBivle\\-maint hook\\fR.",
        ".SH SEE ALSO",
        "\\fBdpkg\\fR(1), \\fBinvoke\\-rc.d\\fR(8), \\fBpg_dump\\fR(1)",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    cli = argparse.ArgumentParser(description="Write the ivle-maint(1) man page.")
    cli.add_argument("--output", type=Path, help="file to write (default: stdout)")
    cli.add_argument("--date", help="date on the page (default: $SOURCE_DATE_EPOCH or today)")
    args = cli.parse_args()
    os.environ["COLUMNS"] = "100"  # help text never depends on the terminal
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    date = args.date or time.strftime("%Y-%m-%d", time.gmtime(epoch))
    text = manpage(date)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Write ivle-maint(8) from the real argument parser (ivle_maint.cli.build_parser),
or ivle-maint.conf(5) from the settings spec (ivle_maint.config.SETTINGS_SPEC).

    scripts/make-manpage.py [--conf] [--output FILE] [--date YYYY-MM-DD]

Every command and subcommand, its synopsis, description and options come
from argparse, so the page cannot drift from `ivle-maint --help`.  The exit
statuses come from the parser's epilog; the files and every setting with
its default from the same spec `ivle-maint settings --spec` prints.  The
date defaults to
$SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog) so the
build is reproducible.  Run from the source tree; standard library only
(plus what importing ivle_maint.cli needs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ivle_maint import __version__
from ivle_maint.cli import build_parser
from ivle_maint.config import SETTINGS_SPEC

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
            if code.isdigit() or not statuses:
                statuses.append((code, meaning.strip()))
            else:  # a wrapped line of the status above
                statuses[-1] = (statuses[-1][0], f"{statuses[-1][1]} {line.strip()}")
        else:
            in_table = False
            rest.append(line)
    return statuses, "\n".join(rest)


# (section, comment lines, [(key, check)]): the spec's groups of keys.
Group = tuple[str, list[str], list[tuple[str, str]]]


def spec_groups(spec: str) -> tuple[list[str], list[Group]]:
    """The spec's opening comment, and each group of keys under one comment."""
    intro: list[str] = []
    groups: list[Group] = []
    section, comment = "", []
    for raw in spec.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section, comment = line.strip("[]"), []
        elif line.startswith("#"):
            text = line[2:] if line[1:2] == " " else line[1:].strip()
            if not section:
                intro.append(text)
            elif groups and groups[-1][0] == section and not comment and not groups[-1][2]:
                groups[-1][1].append(text)
            else:
                comment.append(text)
        elif "=" in line:
            key, _, check = (part.strip() for part in line.partition("="))
            if comment or not groups or groups[-1][0] != section:
                groups.append((section, comment, []))
                comment = []
            groups[-1][2].append((key, check))
    return intro, groups


def describe_check(check: str) -> str:
    """'option('a', 'b', default='a')' -> "one of a, b; default: a"."""
    kind = check.split("(", 1)[0]
    listed = re.search(r"default=list\(([^)]*)\)", check)
    default = re.search(r"default=(?:'([^']*)'|([^,)]+))", check)
    if listed is not None:  # string_list(default=list('a', 'b')) -> "a, b"
        value = ", ".join(re.findall(r"'([^']*)'", listed.group(1)))
    else:
        value = "" if default is None else (default.group(1) if default.group(1) is not None
                                            else default.group(2))
    shown = "empty" if value == "" else value
    if kind == "option":
        choices = re.findall(r"'([^']*)'", check.split("default=", maxsplit=1)[0])
        return f"one of {', '.join(choices)}; default: {shown}"
    names = {"string": "text", "float": "seconds (a number)", "integer": "an integer",
             "boolean": "true or false", "string_list": "a comma-separated list of names",
             "site_list": "a comma-separated list of Apache site names, at least one",
             "path": "an absolute path", "optional_path": "an absolute path, or empty",
             "command": "a program: a name on PATH, or an absolute path",
             "node_name": "one word of at most 253 characters"}
    limits = re.search(r"min=([0-9.]+)", check)
    least = f", at least {limits.group(1)}" if limits else ""
    return f"{names.get(kind, kind)}{least}; default: {shown}"


def path_defaults() -> dict[str, str]:
    """[paths] key -> default, from the spec."""
    return {key: re.sub(r".*default='([^']*)'.*", r"\1", check)
            for section, _, keys in spec_groups(SETTINGS_SPEC)[1] for key, check in keys
            if section == "paths"}


ENVIRONMENT = [
    ("IVLECONF", "The directory holding IVLE's ivle.conf, as for IVLE itself "
     "(default: /etc/ivle; [paths] ivle_conf_dir takes precedence)."),
    ("IVLE_MAINT_CONF", "The settings file, when --config is not given "
     "(default: /etc/ivle/ivle-maint.conf); it must exist when named."),
    ("DPKG_MAINTSCRIPT_PACKAGE", "Set by dpkg for a maintainer script: the package whose "
     "version \\fBhook\\fR asks of dpkg (default: --package, ivle)."),
    ("DPKG_MAINTSCRIPT_NAME", "Set by dpkg: output is then never coloured or "
     "rewritten in place, as no terminal is guaranteed."),
    ("DPKG_ROOT", "Set by dpkg: policy-rc.d is looked for under it."),
]


def files_section() -> list[str]:
    paths = path_defaults()
    rows = [
        ("/etc/ivle/ivle-maint.conf", "ivle-maint's settings (ivle-maint.conf(5)); "
         "every key is optional."),
        ("/etc/ivle/ivle.conf", "IVLE's own settings: ivle-maint reads [paths], [media], "
         "[database], [usrmgt] and [jail], and changes only [media] version."),
        (paths["state"], "[paths] state: the upgrade journals (one per OLD_to_NEW), the "
         "installed version and media version records."),
        (paths["log"], "[paths] log: one log per run, root:adm 0640, UTC timestamps; "
         "the newest [logs] keep are kept, all but the newest compressed."),
        (paths["backup"], "[paths] backup: pg_dump files taken before migrations "
         "([database] backup_keep kept) and ivle.conf backups; kept on purge."),
        (paths["run"], "[paths] run: the lock that lets one ivle-maint run at a time."),
        (paths["migrations"], "[paths] migrations: the migrations IVLE's package ships."),
        ("/usr/share/ivle-maint/maintscript/", "IVLE's preinst, postinst, prerm and postrm "
         "lines, for packages not built with dh_ivle_maint(1)."),
    ]
    out: list[str] = []
    for path, text in rows:
        out += [".TP", f"\\fI{esc(path)}\\fR", esc(text)]
    return out


def manpage(date: str) -> str:
    parser = build_parser()
    statuses, _ = epilog_sections(parser.epilog or "")
    first = (parser.description or "").split(".")[0].split(":")[0].strip()
    out = [
        f'.TH IVLE\\-MAINT 8 "{date}" "ivle-maint {__version__}" "IVLE administration"',
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
    out += [".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        roff = esc(text).replace("\\efB", "\\fB").replace("\\efR", "\\fR")
        out += [".TP", f"\\fB{name}\\fR", roff]
    out += [".SH FILES", *files_section()]
    out += [
        ".SH SEE ALSO",
        "\\fBivle\\-maint.conf\\fR(5), \\fBdh_ivle_maint\\fR(1), \\fBdpkg\\fR(1), "
        "\\fBinvoke\\-rc.d\\fR(8), \\fBpg_dump\\fR(1),",
        "\\fI/usr/share/doc/ivle\\-maint/README.md.gz\\fR (and the other pages there:",
        "operations, clusters, package\\-maintainer, design)",
    ]
    return "\n".join(out) + "\n"


def conf_manpage(date: str) -> str:
    intro, groups = spec_groups(SETTINGS_SPEC)
    out = [
        f'.TH IVLE\\-MAINT.CONF 5 "{date}" "ivle-maint {__version__}" "IVLE administration"',
        ".SH NAME",
        "ivle\\-maint.conf \\- settings of ivle\\-maint, which upgrades IVLE nodes",
        ".SH SYNOPSIS",
        "\\fI/etc/ivle/ivle\\-maint.conf\\fR",
        ".SH DESCRIPTION",
        *para(" ".join(intro)),
        *para("An INI-style file (configobj): [section] lines, then key = value lines; "
              "# starts a comment.  A value of the wrong type is an error (exit status 2) "
              "before anything is done.  "
              "'ivle-maint settings' shows the settings in effect, 'ivle-maint settings "
              "--spec' this whole list as a file to start from."),
    ]
    current = ""
    for section, comment, keys in groups:
        if section != current:
            out += [f'.SH "[{esc(section)}]"']
            current = section
        out += [".TP", ", ".join(f"\\fB{esc(key)}\\fR" for key, _ in keys)]
        out += [esc(" ".join(line.strip() for line in comment)) or "\\&"]
        for key, check in keys:
            out += [".br", esc(f"{key}: {describe_check(check)}")]
    out += [
        ".SH FILES",
        ".TP", "\\fI/etc/ivle/ivle\\-maint.conf\\fR",
        "The default location; \\fB\\-\\-config\\fR \\fIFILE\\fR or "
        "\\fB$IVLE_MAINT_CONF\\fR name another.",
        ".SH SEE ALSO",
        "\\fBivle\\-maint\\fR(8), \\fBdh_ivle_maint\\fR(1)",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    cli = argparse.ArgumentParser(description="Write the ivle-maint(8) man page.")
    cli.add_argument("--conf", action="store_true", help="write ivle-maint.conf(5) instead")
    cli.add_argument("--output", type=Path, help="file to write (default: stdout)")
    cli.add_argument("--date", help="date on the page (default: $SOURCE_DATE_EPOCH or today)")
    args = cli.parse_args()
    os.environ["COLUMNS"] = "100"  # help text never depends on the terminal
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    date = args.date or time.strftime("%Y-%m-%d", time.gmtime(epoch))
    text = conf_manpage(date) if args.conf else manpage(date)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""README.md and doc/*.md: every link resolves, every test they name exists,
every make target and ivle-maint command they show is real."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ivle_maint.cli import EXIT_STATUSES, build_parser

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DOCS = [REPO / "README.md", *sorted((REPO / "doc").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def prose(path: Path) -> str:
    """The text without indented code blocks (shell examples, rules files)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith(("    ", "\t")))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists() or (anchor and dest.suffix == ".md"
                                 and anchor not in anchors(dest)):
            broken.append(target)
    assert broken == []


def test_docs_are_linked_from_the_readme_and_the_readme_is_short():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 300
    for doc in DOCS[1:]:
        name = doc.relative_to(REPO).as_posix()
        if name != "doc/ivle-package.md":  # the old name, pointing at its successor
            assert f"]({name}" in readme, name


def file_named(ref: str) -> Path | None:
    """The test file a reference names: tests/..., FOLDER/test_x.py, or test_x.py
    (tests/abuse/ first, as the design tables say, then any folder)."""
    if ref.startswith("tests/"):
        return REPO / ref
    if "/" in ref:
        return TESTS / ref
    if (TESTS / "abuse" / ref).exists():
        return TESTS / "abuse" / ref
    found = sorted(TESTS.glob(f"*/{ref}"))
    return found[0] if found else None


def named_tests(doc: Path) -> list[tuple[str, str]]:
    """(file, function) of every test a document names, in order (function ""
    for a file named alone); a bare `::name` or `test_name` is in the file
    named just before it."""
    out = []
    current = ""
    for span in CODE.findall(doc.read_text(encoding="utf-8")):
        code = span.strip()
        m = re.fullmatch(r"((?:[\w./-]+/)?test_\w+\.py)(?:::(test_\w+))?", code)
        if m:
            current = m.group(1)
            out.append((current, m.group(2) or ""))
            continue
        m = re.fullmatch(r"(?:::)?(test_\w+)", code)
        if m and current:
            out.append((current, m.group(1)))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_test_named_exists(doc):
    missing = []
    for ref, name in named_tests(doc):
        path = file_named(ref)
        if path is None or not path.exists():
            missing.append(f"{ref} (no such file)")
        elif name and not re.search(rf"^\s*(?:async )?def {name}\(",
                                    path.read_text(encoding="utf-8"), re.M):
            missing.append(f"{ref}::{name}")
    assert missing == []


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_make_target_shown_exists(doc):
    lines = doc.read_text(encoding="utf-8").splitlines()
    text = "\n".join(CODE.findall("\n".join(lines))
                     + [line for line in lines if line.startswith(("    ", "\t"))])
    shown = set(re.findall(r"(?<![\w-])make (?:-j2 (?:--output-sync=target )?)?([a-z][\w-]*)",
                           text))
    assert shown - make_targets() == set()


def sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def check_command(words: list[str]) -> str | None:
    """None if `ivle-maint WORDS...` names real commands and options, else why not."""
    parser = build_parser()
    known = options(parser)
    for raw in words:
        word = raw.rstrip(",;.)")
        if word != raw and word.startswith("-") and word.split("=")[0] not in known:
            return f"no option {word}"
        if word != raw:  # the end of the command: a comma or a full stop
            return None
        subs = sub_parsers(parser)
        if word.startswith("--"):
            if word.split("=")[0] not in known:
                return f"no option {word}"
        elif subs and re.fullmatch(r"[a-z][a-z-]*", word):
            if word not in subs:
                return f"no command {word}"
            parser = subs[word]
            known |= options(parser)
        elif subs:
            return None  # a placeholder (COMMAND, SCRIPT) or a shell word: stop here
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_ivle_maint_command_shown_exists(doc):
    wrong = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    shown = CODE.findall("\n".join(lines)) + [line.strip() for line in lines
                                               if line.startswith(("    ", "\t"))]
    for line in (m for code in shown
                 for m in re.findall(r"(?:^|\s)ivle-maint((?: [^\s`|&;'\"]+)+)", code)):
        words = line.split()
        if words and words[0].startswith(("(", "[")):
            continue
        why = check_command(words)
        if why:
            wrong.append(f"ivle-maint{line}: {why}")
    assert wrong == []


def test_readme_exit_statuses_are_those_of_help():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    in_help = re.findall(r"^  (\d+) ", EXIT_STATUSES, re.M)
    in_readme = re.findall(r"^\| (\d+) \|", readme, re.M)
    assert in_readme == in_help

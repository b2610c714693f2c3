"""The documentation: README.md and docs/*.md.

* every relative link resolves to a file, and every ``#anchor`` into a Markdown file to one of its
  headings, slugged as GitHub slugs them;
* every ``boxtune ...`` command quoted in a shell code block (``bash``, ``sh``, ``shell``,
  ``console`` or untyped) or in an inline code span parses with the real command line,
  ``tune.cli.build_parser()``: a misspelt flag or a missing argument is a doc that lies;
* README.md stays the front door: at most 250 lines.

Nothing here imports torch: the parser is the cheap part of the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
SHELL_OPERATOR_CHARS = set("|&;<>()")  # a word of only these ends the command: a pipe, redirection, && or ;


# --- reading Markdown ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fence:
    language: str  # the info string's first word, lower case ("" when untyped)
    lines: tuple[tuple[int, str], ...]  # (1-based line number, text without the fence's indent)


def split_markdown(text: str) -> tuple[list[Fence], list[tuple[int, str]]]:
    """The fenced code blocks, and the lines outside them (numbered from 1)."""
    fences: list[Fence] = []
    prose: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        marker, indent = match["fence"], len(match["indent"])
        info = match["info"].strip()
        closing = re.compile(rf"^\s*{re.escape(marker[0])}{{{len(marker)},}}\s*$")
        body = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            line = lines[i]
            body.append((i + 1, line[min(indent, len(line) - len(line.lstrip(" "))):]))
            i += 1
        i += 1  # the closing fence (or the end of the file)
        fences.append(Fence(info.split()[0].lower() if info else "", tuple(body)))
    return fences, prose


def paragraphs(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Runs of non-blank prose lines, joined with newlines, each with its first line number."""
    out: list[tuple[int, str]] = []
    start, buf = 0, []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            if not buf:
                start = number
            buf.append(line)
        elif buf:
            out.append((start, "\n".join(buf)))
            buf = []
    return out


def code_spans(paragraph: str) -> list[tuple[int, str]]:
    """(line offset in the paragraph, text) of its inline code spans, whitespace (line breaks too)
    collapsed as Markdown does."""
    return [(paragraph.count("\n", 0, m.start()), " ".join(m[2].split())) for m in CODE_SPAN.finditer(paragraph)]


def without_code_spans(paragraph: str) -> str:
    return CODE_SPAN.sub("code", paragraph)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than - and _
    removed, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor of a Markdown file: its headings' slugs (repeats numbered -1, -2, ...) and HTML ids."""
    fences, prose = split_markdown(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        out.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match[2])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside code."""
    _, prose = split_markdown(path.read_text())
    out = []
    for number, paragraph in paragraphs(prose):
        text = without_code_spans(paragraph)
        for match in LINK.finditer(text):
            out.append((number + text.count("\n", 0, match.start()), match[1]))
    return out


def link_problem(source: Path, target: str) -> str | None:
    """Why a link from ``source`` does not resolve, or None. External links (a scheme) are not followed."""
    if SCHEME.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    if not path_part:
        resolved = source
    elif path_part.startswith("/"):
        resolved = REPO / path_part.lstrip("/")
    else:
        resolved = (source.parent / path_part).resolve()
    if not resolved.exists():
        return f"{path_part}: no such file or folder"
    if anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
        return f"#{anchor}: no such heading in {resolved.name}"
    return None


# --- finding boxtune commands -------------------------------------------------------------------


def shell_lines(fence: Fence) -> list[tuple[int, str]]:
    """A shell block's logical lines: ``\\`` continuations joined; in a console block only ``$``
    prompt lines count (the rest is output), with the prompt stripped."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in fence.lines:
        if pending is not None:
            start, text = pending
            text += " " + line.strip()
        elif fence.language == "console":
            stripped = line.lstrip()
            if not stripped.startswith("$ "):
                continue
            start, text = number, stripped[2:]
        else:
            stripped = line.lstrip()
            start, text = number, stripped[2:] if stripped.startswith("$ ") else stripped
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        out.append((start, text))
    if pending is not None:
        out.append(pending)
    return out


def tokens(command: str) -> list[str]:
    """Shell words up to the first pipe, redirection, ``&&`` or ``;``; a ``#`` comment dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = []
    for word in lexer:
        if set(word) <= SHELL_OPERATOR_CHARS:
            break
        words.append(word)
    return words


def boxtune_argv(command: str) -> list[str] | None:
    """The arguments after ``boxtune`` in a shell command line, or None when it runs no boxtune.

    ``boxtune`` may follow ``env VAR=...`` or another command (``ray job submit ... --``), or be
    a quoted argument of one (``ray exec cluster.yaml 'boxtune status RUN'``).
    """
    words = tokens(command)
    for i, word in enumerate(words):
        if word == "boxtune" or word.endswith("/boxtune"):
            return words[i + 1:]
        if re.match(r"^boxtune [a-z]", word):
            return boxtune_argv(word)
    return None


@dataclass(frozen=True)
class Quoted:
    where: str  # file:line
    text: str  # the command as the docs quote it
    argv: tuple[str, ...]
    inline: bool  # an inline code span: `boxtune sweep` alone names a command


def quoted_commands(path: Path) -> list[Quoted]:
    fences, prose = split_markdown(path.read_text())
    where = path.relative_to(REPO)
    out = []
    for fence in fences:
        if fence.language not in SHELL_LANGUAGES:
            continue
        for number, line in shell_lines(fence):
            argv = boxtune_argv(line)
            if argv is not None:
                out.append(Quoted(f"{where}:{number}", line, tuple(argv), inline=False))
    for number, paragraph in paragraphs(prose):
        for offset, span in code_spans(paragraph):
            if span.startswith("boxtune "):
                argv = boxtune_argv(span)
                out.append(Quoted(f"{where}:{number + offset}", span, tuple(argv or ()), inline=True))
    return out


# --- checking a command against the parser ------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def names_a_command(argv: list[str]) -> bool:
    """True when ``argv`` is only subcommand names (``sweep``, ``data summary``): a command
    mentioned by name in prose, not an invocation."""
    from tune.cli import build_parser

    parser = build_parser()
    if not argv:
        return False
    for word in argv:
        choices = _subcommands(parser)
        if word not in choices:
            return False
        parser = choices[word]
    return True


def _exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and its subcommands with abbreviations off: the docs quote whole flags."""
    parser.allow_abbrev = False
    for sub in _subcommands(parser).values():
        _exact(sub)
    return parser


def parse_error(argv: list[str]) -> str | None:
    """argparse's complaint about ``boxtune ARGV``, or None when it parses (``--help`` parses).
    An abbreviated flag (``--add`` for ``--address``) is a complaint too."""
    from tune.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _exact(build_parser()).parse_args(argv)
    except SystemExit as exit:
        if exit.code in (0, None):
            return None
        lines = err.getvalue().strip().splitlines()
        return lines[-1] if lines else f"exit status {exit.code}"
    return None


# --- the checks ---------------------------------------------------------------------------------

LINKS = [(page, number, target) for page in PAGES for number, target in links(page)]
COMMANDS = [c for page in PAGES for c in quoted_commands(page)]


def test_readme_is_at_most_250_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize(("page", "number", "target"), LINKS,
                         ids=[f"{p.relative_to(REPO)}:{n}:{t}" for p, n, t in LINKS])
def test_link_resolves(page, number, target):
    assert link_problem(page, target) is None, f"{page.relative_to(REPO)}:{number}: {link_problem(page, target)}"


@pytest.mark.parametrize("quoted", COMMANDS, ids=[f"{c.where}:{c.text[:60]}" for c in COMMANDS])
def test_quoted_command_parses(quoted):
    if quoted.inline and names_a_command(list(quoted.argv)):
        return
    assert parse_error(list(quoted.argv)) is None, f"{quoted.where}: `{quoted.text}`: {parse_error(list(quoted.argv))}"


def test_the_checks_find_what_they_check():
    readme_links = [t for p, _, t in LINKS if p == README and t.startswith("docs/")]
    readme_commands = {c.argv[0] for c in COMMANDS if c.where.startswith("README.md") and c.argv}
    assert len(readme_links) >= 8
    assert {"data", "sweep", "status", "tensorboard", "report", "export", "predict", "train"} <= readme_commands
    assert len(COMMANDS) >= 50


# --- the helpers, on known input ----------------------------------------------------------------


def test_slug_follows_github():
    assert slug("Overriding keys: --set") == "overriding-keys---set"
    assert slug("Against torchvision's reference, on CPU") == "against-torchvisions-reference-on-cpu"
    assert slug("Part 1: `class_map` copy") == "part-1-class_map-copy"
    assert slug("Does a config fit its share?") == "does-a-config-fit-its-share"


def test_repeated_headings_are_numbered(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n\n## Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n")
    assert anchors(page) == {"a", "notes", "notes-1"}


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Some part\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#some-part) [gone](missing.md) [bad](other.md#no-part) `[code](x.md)`\n")
    found = [(t, link_problem(page, t)) for _, t in links(page)]
    assert found == [("other.md#some-part", None), ("missing.md", "missing.md: no such file or folder"),
                     ("other.md#no-part", "#no-part: no such heading in other.md")]
    assert link_problem(page, "https://example.com/nowhere") is None


def test_shell_lines_join_continuations_and_keep_console_prompts_only():
    fence = Fence("bash", ((1, "$ boxtune sweep a.yaml \\"), (2, "    --set x=1"), (3, "ray up cluster.yaml")))
    assert shell_lines(fence) == [(1, "boxtune sweep a.yaml --set x=1"), (3, "ray up cluster.yaml")]
    console = Fence("console", ((1, "$ boxtune data summary d"), (2, "Split: the dataset's parts")))
    assert shell_lines(console) == [(1, "boxtune data summary d")]


def test_boxtune_argv_drops_comments_pipes_and_wrappers():
    assert boxtune_argv("boxtune status RUN   # from another terminal") == ["status", "RUN"]
    assert boxtune_argv("boxtune data summary DATA | head -1") == ["data", "summary", "DATA"]
    assert boxtune_argv("boxtune report RUN > out.txt && echo done") == ["report", "RUN"]
    assert boxtune_argv("env A=1 B=2 boxtune sweep s.yaml --address auto") == ["sweep", "s.yaml", "--address", "auto"]
    assert boxtune_argv("ray exec cluster.yaml 'boxtune status /mnt/efs/runs/x'") == ["status", "/mnt/efs/runs/x"]
    assert boxtune_argv("ray up cluster.yaml") is None


def test_inline_spans_may_wrap_lines():
    assert code_spans("run `boxtune\n  resume RUN` and\n``a ` b``") == [(0, "boxtune resume RUN"), (2, "a ` b")]


def test_a_misspelt_flag_or_missing_argument_does_not_parse():
    assert parse_error(["report", "RUN", "--top", "3"]) is None
    assert "--tpo" in parse_error(["report", "RUN", "--tpo", "3"])
    assert "--add" in parse_error(["sweep", "s.yaml", "--add", "auto"])  # argparse alone would take it for --address
    assert parse_error(["export", "RUN"]) is not None  # --out is required
    assert parse_error(["sweep", "--help"]) is None
    assert names_a_command(["data", "summary"]) and names_a_command(["sweep"])
    assert not names_a_command(["staus"])

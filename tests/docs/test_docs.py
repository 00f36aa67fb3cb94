"""README.md and docs/*.md: links and repository paths exist, every `btmri` command line
in a code block parses with the real parser, and the front door stays a front door.

Fast and TensorFlow-free: the only project import is `pipeline.cli.build_parser`, whose
handlers import the heavy libraries only when they run.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
# The dated lab notebook: run history and measured figures live there and only there.
LAB_NOTEBOOK = DOCS / "experiments.md"
USER_PAGES = [p for p in PAGES if p != LAB_NOTEBOOK]

# A backticked token is a repository path when it has a "/" and either its first part is
# a top-level folder of the repository or it ends in one of these extensions.
REPO_FILE_EXTENSIONS = (".py", ".md", ".pbtxt", ".ipynb", ".sh", ".toml", ".ini", ".yml", ".yaml")
# Paths on the user's side, never in the repository: the work folder, placeholders,
# cloud and home paths, absolute paths (/path/to/..., /tmp/..., /dev/zero).
USER_SIDE_PREFIXES = ("runs/", "/", "gs://", "~/", "$", "http://", "https://")
# Placeholder and glob characters: `D/<class>/`, `O/{train,eval,test}/`, `/.../runs`.
PLACEHOLDER_MARKS = ("<", ">", "{", "}", "*", "...", "…", "[")

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
INLINE_CODE = re.compile(r"``([^`]+)``|`([^`\n]+)`")
MARKDOWN_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Fenced blocks tagged `text` hold program output, not commands to type.
OUTPUT_LANGUAGES = {"text", "console-output", "output"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}
REDIRECTIONS = {">", ">>", "<", ">&", "<&", "&>", ">|"}


@dataclass(frozen=True)
class Block:
    language: str
    first_line: int  # 1-based line number of the block's first content line
    lines: tuple[str, ...]


def split_markdown(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """Fenced code blocks, and the prose lines (number, text) outside them."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append(Block(language, i - len(body) + 1 if body else i + 1, tuple(body)))
        i += 1  # the closing fence
    return blocks, prose


def top_level_folders() -> set[str]:
    return {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")}


def looks_like_repo_path(token: str, folders: set[str]) -> bool:
    token = token.strip()
    if "/" not in token or " " in token or token.startswith(USER_SIDE_PREFIXES):
        return False
    if any(mark in token for mark in PLACEHOLDER_MARKS) or "://" in token:
        return False
    first = token.split("/", 1)[0]
    return first in folders or token.rstrip("/").endswith(REPO_FILE_EXTENSIONS)


def path_tokens(text: str) -> list[str]:
    """Backticked tokens of prose and the whitespace-separated words of code blocks that
    could name repository paths (a trailing `:line` or punctuation dropped)."""
    out = []
    for match in INLINE_CODE.finditer(text):
        out.extend((match.group(1) or match.group(2)).split())
    return [re.sub(r"(:\d+)?[),.;:]*$", "", t.strip("'\"")) for t in out]


# In a table row that starts with a repository folder (`pipeline/`), bare file names
# (`cli.py`) name files somewhere under that folder.
BARE_FILE = re.compile(r"^[\w.-]+\.(?:py|md|pbtxt|j2|css|config|sh|txt|in|ipynb)$")


def missing_in_folder_row(line: str, repo: Path) -> list[str]:
    cells = line.strip().strip("|").split("|")
    if not line.lstrip().startswith("|") or len(cells) < 2:
        return []
    first = path_tokens(cells[0])
    if not first or not first[0].endswith("/") or not (repo / first[0]).is_dir():
        return []
    folder = repo / first[0]
    names = [t for t in path_tokens("|".join(cells[1:])) if BARE_FILE.match(t)]
    return [f"{first[0]}…/{name}" for name in names if not any(folder.rglob(name))]


def broken_references(page: Path, repo: Path = REPO) -> list[str]:
    """Relative links (against the page's folder) and repository paths (against the
    repository root) in `page` that name nothing on disk."""
    folders = top_level_folders()
    blocks, prose = split_markdown(page.read_text(encoding="utf-8"))
    problems = []
    for number, line in prose:
        for missing in missing_in_folder_row(line, repo):
            problems.append(f"{page.name}:{number}: file `{missing}` does not exist")
        without_code = INLINE_CODE.sub("", line)
        for target in MARKDOWN_LINK.findall(without_code):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                problems.append(f"{page.name}:{number}: link to {target} (no {path})")
        for token in path_tokens(line):
            if looks_like_repo_path(token, folders) and not (repo / token).exists():
                problems.append(f"{page.name}:{number}: path `{token}` does not exist")
    for block in blocks:
        if block.language in OUTPUT_LANGUAGES:
            continue
        for offset, line in enumerate(block.lines):
            code = line.split(" #", 1)[0]
            for word in code.split():
                token = re.sub(r"[),;:]*$", "", word.strip("'\"(`"))
                if looks_like_repo_path(token, folders) and not (repo / token).exists():
                    problems.append(f"{page.name}:{block.first_line + offset}: path `{token}` does not exist")
    return problems


def command_lines(page: Path) -> list[tuple[int, list[str]]]:
    """Every `btmri ...` command in the page's fenced code blocks, as argv after `btmri`:
    line continuations joined, comments, trailing `&`, pipes and redirections dropped."""
    blocks, _ = split_markdown(page.read_text(encoding="utf-8"))
    commands = []
    for block in blocks:
        if block.language in OUTPUT_LANGUAGES:
            continue
        logical: list[tuple[int, str]] = []
        pending, start = "", 0
        for offset, raw in enumerate(block.lines):
            number = block.first_line + offset
            if not pending:
                start = number
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            logical.append((start, pending + raw))
            pending = ""
        if pending:
            logical.append((start, pending))
        for number, line in logical:
            line = line.strip().removeprefix("$ ")
            if "btmri" not in line:
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            try:
                tokens = list(lexer)
            except ValueError as err:  # unbalanced quotes
                commands.append((number, ["<unparsable line>", str(err)]))
                continue
            command: list[str] = []
            for token in [*tokens, ";"]:
                if token in SHELL_SEPARATORS:
                    words = command
                    for i, word in enumerate(words):
                        if word in REDIRECTIONS:
                            words = words[:i]
                            break
                    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # VAR=value prefixes
                        words = words[1:]
                    if words and words[0] == "btmri":
                        commands.append((number, words[1:]))
                    command = []
                else:
                    command.append(token)
    return commands


def parse_failures(pages: list[Path]) -> list[str]:
    from pipeline.cli import build_parser

    failures = []
    for page in pages:
        for number, argv in command_lines(page):
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                    build_parser().parse_args(argv)
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    message = stderr.getvalue().strip().splitlines()[-1:] or [f"exit {exit_.code}"]
                    failures.append(f"{page.name}:{number}: btmri {shlex.join(argv)}: {message[0]}")
    return failures


# ── Links and paths ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_and_repository_paths_exist(page):
    assert broken_references(page) == []


def test_the_checker_reports_a_broken_link_and_a_stale_path(tmp_path):
    (tmp_path / "there.md").write_text("# There\n")
    page = tmp_path / "page.md"
    page.write_text(
        "Good: [there](there.md#there), [web](https://example.org/x.md), `docs/index.md`,\n"
        "`runs/data/prepared/current`, `/path/to/figshare-boxes`, `D/<class>/x.png`.\n"
        "Bad: [gone](gone.md#anchor) and `components/audit/intervals.py`.\n"
        "| `btmri/` | `spec.py` (names), `contract.py` (gone) |\n"
        "```bash\n"
        "python benchmarks/no_such_benchmark.py --x 1\n"
        "```\n"
    )
    problems = broken_references(page)
    assert len(problems) == 4, problems
    assert "page.md:3: link to gone.md#anchor (no gone.md)" in problems
    assert "page.md:3: path `components/audit/intervals.py` does not exist" in problems
    assert "page.md:4: file `btmri/…/contract.py` does not exist" in problems
    assert "page.md:6: path `benchmarks/no_such_benchmark.py` does not exist" in problems


# Paths cited in the code's docstrings and comments, e.g. "(docs/architecture.md, Contracts)".
CODE_PACKAGES = ("btmri", "data_prep", "components", "pipeline", "serving", "benchmarks")
CITED_PATH = re.compile(
    r"(?<![\w./-])((?:btmri|data_prep|components|pipeline|serving|benchmarks|tests|docs)/[\w./-]*\.(?:py|md|pbtxt))\b"
)


def stale_paths_in_code() -> list[str]:
    stale = []
    for package in CODE_PACKAGES:
        for source in sorted((REPO / package).rglob("*.py")):
            for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
                for path in CITED_PATH.findall(line):
                    if not (REPO / path).exists():
                        stale.append(f"{source.relative_to(REPO)}:{number}: {path}")
    return stale


def test_paths_cited_in_the_code_exist():
    assert stale_paths_in_code() == []


def test_the_code_path_checker_finds_a_stale_path():
    assert CITED_PATH.findall("see `components/audit/intervals.py` and docs/architecture.md.") == [
        "components/audit/intervals.py",
        "docs/architecture.md",
    ]
    assert CITED_PATH.findall("tfx/components/foo.py, my_pipeline/x.py") == []


# ── Command lines ───────────────────────────────────────────────────────────────────


def test_command_lines_are_found_and_cleaned(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "btmri serve &              # comment\n"
        "FOO=1 btmri run --data-dir /path/to/x \\\n"
        "    --drop-cross-split-duplicates | tee log\n"
        "docker build . && btmri report --out r.html > /dev/null\n"
        "```\n"
        "```text\n"
        "btmri this is output, not a command\n"
        "```\n"
    )
    assert command_lines(page) == [
        (2, ["serve"]),
        (3, ["run", "--data-dir", "/path/to/x", "--drop-cross-split-duplicates"]),
        (5, ["report", "--out", "r.html"]),
    ]


def test_the_parser_check_reports_a_bad_command(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nbtmri run --no-such-flag\nbtmri synth --out x\n```\n")
    failures = parse_failures([page])
    assert len(failures) == 1 and failures[0].startswith("page.md:2: btmri run --no-such-flag"), failures


def test_every_btmri_command_line_in_the_docs_parses():
    assert sum(len(command_lines(p)) for p in PAGES) > 30
    assert parse_failures(PAGES) == []


# ── The front door and the site ──────────────────────────────────────────────────────


def test_readme_is_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"
# A figure of the results table: a number with three decimals, or an interval.
FIGURE = re.compile(r"\d\.\d{3}\b|\[\d+(?:\.\d+)?, \d+(?:\.\d+)?\]")


def _results_block(page: Path) -> tuple[str, str]:
    text = page.read_text(encoding="utf-8")
    assert text.count(RESULTS_BEGIN) == 1 and text.count(RESULTS_END) == 1, page.name
    before, rest = text.split(RESULTS_BEGIN)
    inside, after = rest.split(RESULTS_END)
    return inside, before + after


def test_headline_figures_live_only_in_the_results_table():
    inside, _ = _results_block(README)
    results_inside, _ = _results_block(DOCS / "results.md")
    figures = set(FIGURE.findall(inside)) | set(FIGURE.findall(results_inside))
    assert figures, "no figures between the results markers"
    for page in USER_PAGES:
        text = page.read_text(encoding="utf-8")
        if RESULTS_BEGIN in text:
            _, text = _results_block(page)
        # Prose only: a command's example output in a code block may share a number.
        text = "\n".join(line for _, line in split_markdown(text)[1])
        repeated = sorted(f for f in figures if f in text)
        assert not repeated, f"{page.name} repeats headline figures {repeated}: link to docs/results.md"


# First person and run history belong in the lab notebook only.
FIRST_PERSON = re.compile(r"(?<![\w/'-])(I|we|We|my|My|our|Our|us)(?![\w/'-])")
RUN_HISTORY = ("next steps", "not done", "first attempt", "i left")


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_user_pages_are_impersonal_and_state_how_things_are(page):
    _, prose = split_markdown(page.read_text(encoding="utf-8"))
    problems = []
    for number, line in prose:
        text = INLINE_CODE.sub("", line)
        if found := FIRST_PERSON.findall(text):
            problems.append(f"{page.name}:{number}: first person {found}")
        problems.extend(f"{page.name}:{number}: {p!r}" for p in RUN_HISTORY if p in text.lower())
    assert problems == []


def test_every_page_is_in_the_site_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs" and config["theme"]["name"] == "material"

    def pages(nav) -> list[str]:
        out = []
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            out.extend(pages(value) if isinstance(value, list) else [value])
        return out

    assert sorted(pages(config["nav"])) == sorted(p.name for p in DOCS.glob("*.md"))


def test_the_command_line_reference_matches_the_parser():
    """docs/cli.md has a section per subcommand, every flag it names in a section is
    that subcommand's, and its exit-code table is btmri.cli_conventions.EXIT_CODES."""
    import re as regex

    from btmri.cli_conventions import EXIT_CODES
    from pipeline.cli import build_parser

    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    commands = action.choices
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = dict(regex.findall(r"^### `btmri (\w+)`\n(.*?)(?=^##)", text + "\n##", regex.S | regex.M))
    assert set(sections) == set(commands)
    for name, body in sections.items():
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        # A flag pattern like --audit-min-* names several flags: skipped.
        named = set(regex.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9]|-[vq])(?![\w*-])", body))
        assert named <= flags, f"{name}: {sorted(named - flags)} not flags of btmri {name}"
    exit_section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    table = regex.findall(r"^\| (\d) \|", exit_section, regex.M)
    assert [int(c) for c in table] == sorted(EXIT_CODES)

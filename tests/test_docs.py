"""The user-facing text: every relative link and #anchor in README.md, docs/*.md and
data_README.md resolves, the README stays a two-minute read, and no page, notebook markdown
cell or package string tells the project's own development history. External links are not
fetched (the tests never touch the network)."""

from __future__ import annotations

import ast
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_WORDS = 1500

# Development history, not documentation: a figure that depends on a version belongs in a
# results file, and what changed when belongs in the commit log.
HISTORY = re.compile(
    r"\bstop \d+|\bissues? #?\d+|closing note|earlier build|earlier torch|measured again"
    r"|no GPU was available while|what the demo was before|\bsince (?:stop|issue)\b",
    re.I,
)


def markdown_pages(root: Path) -> list[Path]:
    """The Markdown a user reads: README.md, data_README.md and docs/*.md."""
    pages = [root / "README.md", root / "data_README.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in pages if p.is_file()]


# --- links and anchors ----------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
_LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HREF = re.compile(r"<a\s[^>]*?href=\"([^\"]*)\"", re.I)
_EXPLICIT_ID = re.compile(r"<a\s[^>]*?(?:id|name)=\"([^\"]+)\"", re.I)
_INLINE_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def _without_code_blocks(text: str) -> str:
    """`text` with fenced code blocks blanked (their newlines kept, so line numbers hold)."""
    return _FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text lowercased, punctuation other
    than `-` and `_` dropped, each space turned into `-`."""
    text = _INLINE_LINK.sub(lambda m: m[1], heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags render as nothing
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: one per heading (a repeated slug gets -1, -2, ...) and each
    explicit `<a id=...>` / `<a name=...>`."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for m in _HEADING.finditer(_without_code_blocks(text)):
        base = slug(m[2])
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    found.update(_EXPLICIT_ID.findall(text))
    return found


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) for each Markdown link, image and `<a href>` outside code."""
    prose = _without_code_blocks(text)
    prose = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), prose)
    for pattern in (_LINK, _HREF):
        for m in pattern.finditer(prose):
            yield prose.count("\n", 0, m.start()) + 1, m[1]


def broken_links(root: Path) -> list[str]:
    """One line per relative link or anchor in the user's Markdown that does not resolve."""
    problems = []
    for page in markdown_pages(root):
        text = page.read_text(encoding="utf-8")
        for line, target in links(text):
            if not target or re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http(s), mailto, ...: external, never fetched
            path, _, anchor = target.partition("#")
            where = f"{page.relative_to(root)}:{line}: {target}"
            dest = Path(os.path.normpath(page.parent / path)) if path else page
            if not dest.is_relative_to(os.path.normpath(root)):  # by name: links are not followed
                problems.append(f"{where}: points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}: no such file")
                continue
            if anchor:
                if dest.suffix.lower() != ".md" or dest.is_dir():
                    problems.append(f"{where}: an anchor into a page that is not Markdown")
                elif anchor not in anchors(dest.read_text(encoding="utf-8")):
                    problems.append(f"{where}: no heading or <a id> gives #{anchor}")
    return problems


def test_every_relative_link_and_anchor_resolves():
    assert markdown_pages(ROOT), "README.md not found"
    problems = broken_links(ROOT)
    assert not problems, "\n".join(problems)


# The checker itself, on pages made to fail.


def _copy_of_the_pages(tmp_path: Path) -> Path:
    for page in markdown_pages(ROOT):
        dest = tmp_path / page.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, dest)
    for target in ("notebooks", "pyproject.toml", "LICENSE", "pneumolib", "tests"):
        if (ROOT / target).exists():  # what the pages may link to
            (tmp_path / target).symlink_to(ROOT / target)
    return tmp_path


def test_a_copy_of_the_pages_passes_and_a_broken_link_fails(tmp_path: Path):
    root = _copy_of_the_pages(tmp_path)
    assert broken_links(root) == []
    readme = root / "README.md"
    readme.write_text(
        readme.read_text()
        + "\n[gone](docs/no-such-page.md) [bad anchor](docs/faults.md#no-such-heading)\n"
    )
    problems = broken_links(root)
    assert len(problems) == 2, problems
    assert "docs/no-such-page.md: no such file" in problems[0]
    assert "#no-such-heading" in problems[1]


def test_a_page_that_disappears_breaks_the_links_to_it(tmp_path: Path):
    root = _copy_of_the_pages(tmp_path)
    (root / "docs" / "faults.md").unlink()
    assert any("docs/faults.md" in p for p in broken_links(root))


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Quick start", "quick-start"),
        ("At full scale: 26,684 files", "at-full-scale-26684-files"),
        ("Notebook 03's study over seeds", "notebook-03s-study-over-seeds"),
        ("`stage_2_train_labels.csv`", "stage_2_train_labelscsv"),
        ("Comparing runs, and the three-class head", "comparing-runs-and-the-three-class-head"),
        ("See [the docs](docs/README.md) now", "see-the-docs-now"),
        ("a  b", "a--b"),
    ],
)
def test_slug_follows_githubs_rule(heading: str, expected: str):
    assert slug(heading) == expected


def test_repeated_headings_and_explicit_ids_are_anchors():
    text = '# A\n## A\n```\n# not a heading\n```\n### A\n<a id="here"></a>\n<a name="there"></a>\n'
    assert anchors(text) == {"a", "a-1", "a-2", "here", "there"}


def test_links_inside_code_are_not_links():
    text = "[x](a.md)\n`[y](b.md)`\n```\n[z](c.md)\n```\n[![i](img.svg)](d.md)\n"
    assert [t for _, t in links(text)] == ["a.md", "img.svg", "d.md"]


# --- the README's length --------------------------------------------------------------------


def word_count(text: str) -> int:
    """Words as `wc -w` counts them: runs of characters between whitespace."""
    return len(text.split())


def test_readme_is_a_two_minute_read():
    words = word_count((ROOT / "README.md").read_text(encoding="utf-8"))
    assert words <= README_MAX_WORDS, (
        f"README.md has {words} words (at most {README_MAX_WORDS}): move detail to docs/"
    )


def test_word_count_fails_a_long_readme():
    assert word_count("one two\nthree\tfour") == 4
    assert word_count("word " * (README_MAX_WORDS + 1)) > README_MAX_WORDS


# --- no development history -----------------------------------------------------------------


def history_in_text(text: str, name: str) -> list[str]:
    """`name:line: phrase` for each development-history phrase in `text` (a phrase may wrap)."""
    flat = re.sub(r"\s+", " ", text)
    starts = [m.start() for m in re.finditer(r"\S+", text)]  # word i of flat <-> text
    hits = []
    for m in HISTORY.finditer(flat):
        word = flat.count(" ", 0, m.start()) - (1 if flat.startswith(" ") else 0)
        line = text.count("\n", 0, starts[word]) + 1 if starts else 1
        hits.append(f"{name}:{line}: {m[0]}")
    return hits


def history_in_pages(root: Path) -> list[str]:
    return [
        hit
        for page in markdown_pages(root)
        for hit in history_in_text(page.read_text(encoding="utf-8"), str(page.relative_to(root)))
    ]


def history_in_notebooks(root: Path) -> list[str]:
    """Hits in the markdown cells of notebooks/NN_name.py, with the line in the .py file."""
    jupytext = pytest.importorskip("jupytext")
    hits = []
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.py")):
        text = path.read_text(encoding="utf-8")
        lines, first = text.splitlines(), 1
        for cell in jupytext.reads(text, fmt="py:percent").cells:
            if cell.cell_type != "markdown":
                continue
            first = _first_line_of(cell.source, lines, after=first)
            for hit in history_in_text(cell.source, path.relative_to(root).as_posix()):
                name, line, phrase = hit.split(":", 2)
                hits.append(f"{name}:{first + int(line) - 1}:{phrase}")
    return hits


def _first_line_of(source: str, lines: list[str], after: int) -> int:
    """The line of the .py file, from line `after` on, where a markdown cell's text starts
    (percent format: each markdown line commented out with "# "); `after` when not found."""
    head = source.strip().splitlines()[0].strip() if source.strip() else ""
    for i in range(after, len(lines) + 1):
        if head and lines[i - 1].removeprefix("# ").strip() == head:
            return i
    return after


def history_in_package(root: Path) -> list[str]:
    """Hits in every string the package holds: docstrings, help strings and messages."""
    hits = []
    for path in sorted((root / "pneumolib").rglob("*.py")):
        name = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for hit in history_in_text(node.value, name):
                    _, line, phrase = hit.split(":", 2)
                    hits.append(f"{name}:{node.lineno + int(line) - 1}:{phrase}")
    return hits


def test_no_development_history_in_the_pages():
    hits = history_in_pages(ROOT)
    assert not hits, "\n".join(hits)


def test_no_development_history_in_the_notebooks_markdown():
    hits = history_in_notebooks(ROOT)
    assert not hits, "\n".join(hits)


def test_no_development_history_in_the_package_strings():
    hits = history_in_package(ROOT)
    assert not hits, "\n".join(hits)


def test_history_check_finds_a_wrapped_phrase_and_its_line(tmp_path: Path):
    assert history_in_text("fine\nmeasured\nagain here", "x.md") == ["x.md:2: measured again"]
    assert history_in_text("see stop 21 and Issue 9", "y") == ["y:1: stop 21", "y:1: Issue 9"]
    assert history_in_text("stop the run; this issue is known", "z") == []
    (tmp_path / "pneumolib").mkdir()
    (tmp_path / "pneumolib" / "m.py").write_text('x = 1\n"""As in the closing note."""\n')
    assert history_in_package(tmp_path) == ["pneumolib/m.py:2: closing note"]
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_x.py").write_text(
        "# %% [markdown]\n# # Title\n# measured on an earlier build\n\n# %%\nx = 1\n"
    )
    assert history_in_notebooks(tmp_path) == ["notebooks/01_x.py:3: earlier build"]

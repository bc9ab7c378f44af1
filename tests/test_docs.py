"""The documentation's relative links resolve, and README stays short.

Every relative link in README.md, docs/**/*.md and research/README.md must name a file or folder
of the repository, and a ``#anchor`` into a markdown file must be one of its headings, slugged as
GitHub does (lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` … for repeats).
Links inside code blocks and code spans are not links; web links are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 220

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\s*\)")
HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""", re.I)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, …


def doc_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    files += [p for p in (REPO / "research" / "README.md",) if p.is_file()]
    return files


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
        elif fence is not None and m and m.group(1).startswith(fence):
            fence = None
        elif fence is None:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): inline markup reduced to its text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links → their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ " or c.isspace()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in the file's prose."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            out.append((number, m.group(1)))
    return out


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    problems = []
    for number, target in links(path):
        where = f"{path.relative_to(root)}:{number}: ({target})"
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if root not in (dest, *dest.parents):
            problems.append(f"{where} points outside the repository")
        elif not dest.exists():
            problems.append(f"{where} names no file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where} names no heading of {dest.relative_to(root)}")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checker itself: it resolves what exists and reports what does not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text(
        "# Toward 1.25× LSQ4x8\n\n## `--set` and `eval`\n\n## Again\n\n## Again\n\n```\n# not a heading\n```\n",
        encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "[ok](docs/b.md) [a](docs/b.md#toward-125-lsq4x8) [c](docs/b.md#--set-and-eval) [dir](docs/)\n"
        "[rep](docs/b.md#again-1) [web](https://example.com/x) `[span](missing.md)` [self](#top)\n"
        "```\n[fenced](missing.md)\n```\n"
        "# Top\n"
        "[gone](docs/missing.md) [bad](docs/b.md#nope) [rep2](docs/b.md#again-2) [code](docs/b.md#not-a-heading)\n",
        encoding="utf-8")
    problems = broken_links(tmp_path / "README.md", root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "(docs/missing.md) names no file",
        "(docs/b.md#nope) names no heading of docs/b.md",
        "(docs/b.md#again-2) names no heading of docs/b.md",
        "(docs/b.md#not-a-heading) names no heading of docs/b.md",
    ]

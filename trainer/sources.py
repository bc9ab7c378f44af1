"""Where training and test text comes from on a Debian machine.

Training sources (``TRAIN_SOURCES``): WordNet glosses, the package synopses of
``apt-cache dumpavail``, the NAME and DESCRIPTION paragraphs of the installed English man
pages, and README-type files under ``/usr/share/doc``. Test-only sources (``OOD_SOURCES``),
which no shipped model trains on: Python standard-library docstrings, Debian changelog
entries and the paragraphs of the GNU info manuals. The ``dict-*`` and ``fortune*`` packages
are never read: their texts are reserved for the project's independent evaluation.
"""

from __future__ import annotations

import ast
import gzip
import re
import subprocess
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
MAN_ROOT = Path("/usr/share/man")
DOC_ROOT = Path("/usr/share/doc")
INFO_ROOT = Path("/usr/share/info")
RESERVED_PREFIXES = ("dict-", "fortune")  # independent evaluation only: never read


class CorpusError(RuntimeError):
    """A corpus source is missing on this machine, with the command that installs it."""


def _reserved(path: Path) -> bool:
    return any(part.startswith(RESERVED_PREFIXES) for part in path.parts)


def _read_maybe_gz(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return raw.decode("utf-8", errors="replace")


def wordnet_glosses(root: Path = WORDNET_DIR) -> Iterator[str]:
    """Every synset gloss (definition and examples) of WordNet's data.* files."""
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.exists() for f in files):
        raise CorpusError(f"WordNet data not found under {root}: run 'apt-get install wordnet-base'")
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                yield line.split(" | ", 1)[1]


def debian_synopses(dump: str | None = None) -> Iterator[str]:
    """Package one-line descriptions from ``apt-cache dumpavail``."""
    if dump is None:
        try:
            dump = subprocess.run(
                ["apt-cache", "dumpavail"], check=True, capture_output=True, text=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise CorpusError(f"'apt-cache dumpavail' failed ({exc}); run 'apt-get update' first") from exc
    for line in dump.splitlines():
        if line.startswith("Description: "):
            yield line[len("Description: ") :]


# roff: font and size escapes, named characters, and the few escapes that stand for text.
_ROFF_DROP = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\[&|^%,/:]|\\\".*$")
_ROFF_CHAR = {r"\-": "-", r"\(em": "—", r"\(en": "–", r"\(aq": "'", r"\(dq": '"', r"\(lq": '"',
              r"\(rq": '"', r"\e": "\\", r"\ ": " ", r"\~": " ", r"\(bu": "•", r"\*(lq": '"', r"\*(rq": '"'}
_ROFF_TEXT_MACROS = {".B", ".I", ".BR", ".RB", ".IR", ".RI", ".BI", ".IB", ".SM", ".SB"}
_ROFF_BREAKS = {".PP", ".P", ".LP", ".TP", ".IP", ".HP", ".sp", ".br", ".RS", ".RE", ".nf", ".fi", ".TQ"}


def _roff_text(line: str) -> str:
    for esc, char in _ROFF_CHAR.items():
        line = line.replace(esc, char)
    return _ROFF_DROP.sub("", line).replace('"', "") if line.startswith(".") else _ROFF_DROP.sub("", line)


def man_paragraphs(page: str) -> Iterator[str]:
    """The NAME and DESCRIPTION paragraphs of one roff man page (options lists left out)."""
    section, para, in_tp = "", [], False
    for raw in page.splitlines() + [".SH END"]:
        macro = raw.split(" ", 1)[0] if raw.startswith(".") else ""
        if macro in {".SH", ".SS"} or macro in _ROFF_BREAKS or not raw.strip():
            if para and section in {"NAME", "DESCRIPTION"}:
                yield " ".join(para)
            para = []
            if macro == ".SH":
                section = _roff_text(raw[3:]).strip().strip('"').upper()
            in_tp = macro == ".TP"  # the next line is an option's tag, not prose
            continue
        if macro and macro not in _ROFF_TEXT_MACROS:
            continue
        if in_tp:
            in_tp = False
            continue
        text = _roff_text(raw[len(macro):] if macro else raw).strip()
        if text:
            para.append(text)


def man_pages(root: Path = MAN_ROOT) -> Iterator[str]:
    """NAME and DESCRIPTION paragraphs of every English man page (sections 1–8)."""
    pages = sorted(p for n in range(1, 9) for p in (root / f"man{n}").glob("*") if p.is_file())
    if not pages:
        raise CorpusError(f"no man pages under {root}: run 'apt-get install manpages man-db'")
    for path in pages:
        page = _read_maybe_gz(path)
        if page and not page.startswith(".so "):  # '.so' pages only point at another page
            yield from man_paragraphs(page)


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs that read as sentences, not tables, code or menus."""
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        if not lines or any(ln.startswith(("* ", "File: ", "$ ", "#", "|", "```")) for ln in lines[:1]):
            continue
        para = " ".join(lines)
        letters = sum(c.isalpha() or c == " " for c in para)
        if len(para) >= 40 and letters >= 0.85 * len(para) and para.count(" ") >= 6:
            yield para


def doc_readmes(root: Path = DOC_ROOT) -> Iterator[str]:
    """Paragraphs of README-type files under /usr/share/doc (not changelogs, not copyright)."""
    for path in sorted(root.glob("*/README*")):
        if _reserved(path) or not path.is_file() or "changelog" in path.name.lower():
            continue
        text = _read_maybe_gz(path)
        if text:
            yield from _prose_paragraphs(text)


def info_manuals(root: Path = INFO_ROOT) -> Iterator[str]:
    """Paragraphs of the GNU info manuals (test text only: no shipped model trains on it)."""
    for path in sorted(root.glob("*.info*")):
        if _reserved(path):
            continue
        text = _read_maybe_gz(path)
        if text:
            yield from _prose_paragraphs(text.replace("\x1f", "\n\n"))


def python_docstrings(stdlib: Path | None = None) -> Iterator[str]:
    """First paragraph of every docstring in the Python standard library (out-of-domain text)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if any(p in {"site-packages", "test", "tests", "idlelib", "lib2to3"} for p in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc.split("\n\n", 1)[0]


def debian_changelogs(doc_root: Path = DOC_ROOT) -> Iterator[str]:
    """Entries ('  * ...') of every installed package's Debian changelog (out-of-domain text)."""
    for path in sorted(doc_root.glob("*/changelog.Debian.gz")):
        if _reserved(path):
            continue
        text = _read_maybe_gz(path)
        if text is None:
            continue
        entry: list[str] = []
        for line in text.splitlines() + [""]:
            if line.startswith("  * "):
                if entry:
                    yield " ".join(entry)
                entry = [line[4:]]
            elif line.startswith("    ") and entry:
                entry.append(line.strip())
            else:
                if entry:
                    yield " ".join(entry)
                entry = []


SOURCES: dict[str, Callable[[], Iterable[str]]] = {
    "wordnet": wordnet_glosses,
    "debian": debian_synopses,
    "man": man_pages,
    "readme": doc_readmes,
    "pydoc": python_docstrings,
    "changelog": debian_changelogs,
    "info": info_manuals,
}
TRAIN_SOURCES = ("wordnet", "debian", "man", "readme")
OOD_SOURCES = ("pydoc", "changelog", "info")

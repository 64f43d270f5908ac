"""The repository's specifications live in docs/: no file may cite spec files that users do not have, every
relative link in README.md and docs/ must resolve, and every `docs/<file>.md §N` citation must name a real section.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Spec files that existed only outside the repository; their names are split so this file does not cite them.
_OUTSIDE = ("METHOD", "EVAL", "KERNEL", "ARCHITECTURE", "STYLE")
_OUTSIDE_CITATION = re.compile(r"\b(" + "|".join(_OUTSIDE) + r")(\.md\b|\s*§)")
_OUTSIDE_PATH = re.compile("shared" + "/docs/")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_SECTION_CITATION = re.compile(r"(?:docs/|\]\()([a-z_]+\.md)\)?\s*§\s*(\d+(?:\.\d+)*)")


def tracked_text_files() -> list[Path]:
    """Every file git tracks (the working tree's text files where there is no git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
        paths = [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        paths = [
            p for p in ROOT.rglob("*") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
        ]
    texts = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        texts.append(path)
    return texts


def outside_citations(text: str) -> list[str]:
    """The citations of outside spec files in `text`, as 'line N: match'."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern in (_OUTSIDE_CITATION, _OUTSIDE_PATH):
            found += [f"line {number}: {m.group(0)!r}" for m in pattern.finditer(line)]
    return found


def broken_links(markdown: Path) -> list[str]:
    """Relative link targets in a markdown file that do not exist (web links and pure anchors are skipped)."""
    broken = []
    for target in _LINK.findall(markdown.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        if not (markdown.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    return broken


def missing_sections(text: str, docs_dir: Path) -> list[str]:
    """`<doc>.md §N` citations whose document has no heading numbered N."""
    missing = []
    for name, section in _SECTION_CITATION.findall(text):
        doc = docs_dir / name
        if not doc.is_file():
            continue  # a link to another folder's file; broken_links reports missing targets
        heading = re.compile(r"^#{1,4}\s+" + re.escape(section) + r"\.?\s", re.MULTILINE)
        if not heading.search(doc.read_text(encoding="utf-8")):
            missing.append(f"{name} §{section}")
    return missing


# ------------------------------------------------------------------------------------------- the checkers


def test_outside_citation_patterns() -> None:
    cited = "see " + "METHOD" + ".md §2, " + "EVAL" + " §2.4 and /work/" + "shared/docs/x"
    assert len(outside_citations(cited)) == 3
    assert outside_citations("see docs/method.md §2 and docs/evaluation.md §2.4 (EVALUATION is fine)") == []


def test_broken_links_and_sections(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n## 1. One\n\n### 1.2 Two\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](a.md) [anchor](a.md#one) [web](https://example.org/x.md) [self](#top) [gone](missing.md)",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.md"]
    text = "per docs/a.md §1, [a](a.md) §1.2, docs/a.md §3 and docs/a.md §1.3"
    assert missing_sections(text, tmp_path) == ["a.md §3", "a.md §1.3"]


# ------------------------------------------------------------------------------------------- the repository


def test_docs_exist() -> None:
    for name in ("method.md", "formats.md", "evaluation.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"


def test_no_file_cites_specs_outside_the_repository() -> None:
    offenders = {
        str(path.relative_to(ROOT)): hits
        for path in tracked_text_files()
        if path != Path(__file__).resolve() and (hits := outside_citations(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"cite docs/ instead: {offenders}"


@pytest.mark.parametrize(
    "markdown", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_resolve(markdown: Path) -> None:
    assert broken_links(markdown) == []


def test_section_citations_name_real_sections() -> None:
    offenders = {
        str(path.relative_to(ROOT)): missing
        for path in tracked_text_files()
        if (missing := missing_sections(path.read_text(encoding="utf-8"), DOCS))
    }
    assert not offenders, f"no such section: {offenders}"

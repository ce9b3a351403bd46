"""docs/DESIGN.md is the design the code cites: every "DESIGN.md §n" (or "§n.m", item m of §n's
numbered list) in the sources, tests, benchmarks and docs points at a section that exists."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
CITED_IN = ("fastfvae", "kernels", "bench", "tests", "scripts", "docs", "README.md")
SUFFIXES = {".py", ".cpp", ".cu", ".cuh", ".h", ".sh", ".md", ".txt", ".cmake"}
CITATION = re.compile(r"DESIGN\.md §(\d+)(?:\.(\d+))?")


def _sections() -> dict[int, str]:
    """Section number -> its text (heading included)."""
    parts = re.split(r"^## (\d+)\. ", DESIGN.read_text(), flags=re.M)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2])}


def _cited_files():
    for name in CITED_IN:
        path = ROOT / name
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        yield from (p for p in paths if p.suffix in SUFFIXES and ".venv" not in p.parts)


def broken_citations(text: str, sections: dict[int, str]) -> list[str]:
    """The citations in ``text`` that name no section (or no item of a section's list)."""
    broken = []
    for match in CITATION.finditer(text):
        section, item = int(match.group(1)), match.group(2)
        body = sections.get(section)
        if body is None or (item and not re.search(rf"^{item}\. ", body, flags=re.M)):
            broken.append(match.group(0))
    return broken


def test_every_design_citation_resolves():
    sections = _sections()
    assert sections, "docs/DESIGN.md has no '## n. Title' sections"
    broken = []
    for path in _cited_files():
        for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            broken += [f"{path.relative_to(ROOT)}:{line_number}: {c}" for c in broken_citations(line, sections)]
    assert not broken, "citations of sections docs/DESIGN.md does not have:\n" + "\n".join(broken)


def test_sections_are_numbered_in_order_and_the_readme_links_the_design():
    assert list(_sections()) == list(range(1, len(_sections()) + 1))
    assert "docs/DESIGN.md" in (ROOT / "README.md").read_text()


def test_the_check_finds_a_missing_section_and_a_missing_item():
    sections = {1: "1. Math\n", 18: "18. Examples\n1. Liger\n2. xformers\n"}
    assert broken_citations("DESIGN.md §1 and DESIGN.md §18.2", sections) == []
    assert broken_citations("DESIGN.md §3, DESIGN.md §18.5", sections) == ["DESIGN.md §3", "DESIGN.md §18.5"]


# ---------------------------------------------------------------------------------------------
# Comments stand on their own: no issue numbers, no relative path leaving the repository
# ---------------------------------------------------------------------------------------------
STANDALONE_IN = CITED_IN + ("CMakeLists.txt", "pyproject.toml", ".ci")
RUN_LOGS = {ROOT / "bench" / "RESULTS.md"}  # the dated log of benchmark runs, kept as written
ISSUE = re.compile(r"\b[Ii]ssues? #?\d+")
RELATIVE_PATH = re.compile(r"(?<![\w}/.])((?:\.\./)+[\w./-]+)")


def outside_pointers(text: str, folder: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Issue citations, and relative paths that leave ``root`` or name nothing, in ``text`` (a
    file in ``folder``)."""
    found = [match.group(0) for match in ISSUE.finditer(text)]
    for match in RELATIVE_PATH.finditer(text):
        target = (folder / match.group(1).rstrip(".")).resolve()
        if root not in target.parents or not target.exists():
            found.append(match.group(1))
    return found


def _standalone_files():
    for name in STANDALONE_IN:
        path = ROOT / name
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        yield from (p for p in paths if (p.suffix in SUFFIXES or p.name == "run" or p.suffix == ".toml")
                    and ".venv" not in p.parts and p not in RUN_LOGS and "_lib" not in p.parts)


def test_comments_cite_no_issue_and_no_path_outside_the_repository():
    """A comment keeps its reason in words (or cites a DESIGN.md section): an issue number or a
    path outside the repository means nothing to a reader of the repository alone."""
    found = []
    for path in _standalone_files():
        for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{line_number}: {p}" for p in outside_pointers(line, path.parent)]
    assert not found, "pointers outside the repository (say the reason in words instead):\n" + "\n".join(found)


def test_the_standalone_check_finds_an_issue_number_and_a_path_outside(tmp_path):
    # The planted pointers are assembled at run time, so that this file passes its own check.
    up, issue = "../", "issue"
    (tmp_path / "docs").mkdir()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "a.h").write_text("")
    docs = tmp_path / "docs"
    assert outside_pointers(f"see {up}kernels/a.h, DESIGN.md §3", docs, tmp_path) == []
    assert outside_pointers(f"({issue} 14.9) and {issue.title()} 3's", docs, tmp_path) == [f"{issue} 14", f"{issue.title()} 3"]
    assert outside_pointers(f"the founding design ({up}shared/DESIGN.md)", docs, tmp_path) == [f"{up}shared/DESIGN.md"]
    assert outside_pointers(f"{up}{up}elsewhere/x.py", docs, tmp_path) == [f"{up}{up}elsewhere/x.py"]

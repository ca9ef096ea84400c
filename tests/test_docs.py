"""The documentation that ships with the code stays reachable: every reference to a doc points at a file in
`docs/`, every cited section (`§4.7`) and anchor (`#vlpo`) exists there, and every relative Markdown link resolves.

A reference is `<name>.md §N[.M]` or `<name>.md#anchor` anywhere in the repository's code, configs and Markdown.
Outside `docs/` it must be written `docs/<name>.md` (a bare `method.md` would name a file that is not next to the
text); inside `docs/` the files cite each other by bare name, as relative Markdown links do.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Text files that can carry a reference (code comments, docstrings, help and report strings, configs, Markdown).
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt", ".sh"}
NAMES = {"Makefile"}
# Not the project's text: environments, caches, build and run outputs (see .gitignore).
SKIP_DIRS = {"__pycache__", "build", "dist", "runs", "medlvr_home", "demo_out", "node_modules"}
# The Markdown files whose relative links must resolve.
LINKED_MARKDOWN = ["README.md", "pipelines/README.md", *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))]

# `method.md §4.3-§4.6`, `datasets.md §6.5-6.6`, `benchmarks.md §3.2, §3.4`, `` `datasets.md` §3 ``, `method.md#vlpo`.
SECTION = r"\d+(?:\.\d+)*"
REFERENCE = re.compile(
    r"(?<![\w/.-])(?P<prefix>(?:[\w.-]+/)*)(?P<name>[A-Za-z][\w-]*)\.md`?"
    rf"(?:\s*(?P<sections>§{SECTION}(?:\s*(?:,|-|–|and)\s*§?{SECTION}(?![\w/]))*)|#(?P<anchor>[\w-]+))"
)
SECTION_NUMBER = re.compile(SECTION)
# Every mention of a docs/ file by name, with or without a section, to check how it is written outside docs/.
MENTION = re.compile(r"(?<![\w.-])(?P<path>(?:[\w.-]+/)*)(?P<name>[A-Za-z][\w-]*)\.md\b")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
NUMBERED_TITLE = re.compile(r"^(?P<number>\d+(?:\.\d+)*)\.?\s")
HTML_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Written in two pieces so this file does not match itself.
FORBIDDEN = ["shared" + "/docs", "../" + "shared"]


def project_files() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part.startswith(".") or part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if path == Path(__file__).resolve():
            continue  # this checker: its patterns and made-up examples are not references
        if path.is_file() and (path.suffix in SUFFIXES or path.name in NAMES) and not path.name.startswith("."):
            found.append(path)
    return found


def code_lines(path: Path):
    """(line number, line) pairs, skipping fenced code blocks in Markdown (shell output, not references)."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if path.suffix == ".md" and line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    title = re.sub(r"<[^>]+>", "", title).replace("`", "").strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title))


@cache
def doc_index(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(section numbers, anchors) of one Markdown file. A section number counts when its depth matches the heading
    level (`## 4.`, `### 4.7`), so the numbered dataset entries (`#### 9. fastMRI+`) are not sections."""
    sections, anchors = set(), set()
    for _, line in code_lines(path):
        anchors.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if not heading:
            continue
        title = heading["title"]
        anchors.add(slug(title))
        numbered = NUMBERED_TITLE.match(title)
        if numbered and numbered["number"].count(".") + 2 == len(heading["hashes"]):
            sections.add(numbered["number"])
    return frozenset(sections), frozenset(anchors)


def docs_names() -> set[str]:
    return {p.stem for p in DOCS.glob("*.md")}


def where(path: Path, number: int) -> str:
    return f"{path.relative_to(ROOT)}:{number}"


def test_the_docs_folder_holds_the_referenced_documents():
    assert {"method", "training", "datasets", "benchmarks", "architecture", "mechanism"} <= docs_names()


def test_every_section_and_anchor_reference_exists():
    problems = []
    for path in project_files():
        in_docs = path.parent == DOCS
        for number, line in code_lines(path):
            for ref in REFERENCE.finditer(line):
                name, prefix = ref["name"], ref["prefix"]
                if name not in docs_names() or (prefix and prefix != "docs/"):
                    target = f"{prefix}{name}.md"
                    if not ((ROOT / target).exists() or (path.parent / target).exists()):
                        problems.append(f"{where(path, number)}: {ref[0]!r} names no file here or in docs/")
                    continue  # another folder's file (pipelines/README.md#...): the link test checks linked ones
                if not in_docs and prefix != "docs/":
                    problems.append(f"{where(path, number)}: {ref[0]!r} must be written docs/{name}.md")
                sections, anchors = doc_index(DOCS / f"{name}.md")
                if ref["anchor"] and ref["anchor"] not in anchors:
                    problems.append(f"{where(path, number)}: {ref[0]!r}: no anchor #{ref['anchor']}")
                for cited in SECTION_NUMBER.findall(ref["sections"] or ""):
                    if cited not in sections:
                        problems.append(f"{where(path, number)}: {ref[0]!r}: docs/{name}.md has no section {cited}")
    assert not problems, "\n".join(problems)


def test_docs_files_are_named_with_their_folder_outside_docs():
    problems = []
    names = docs_names()
    for path in project_files():
        if path.parent == DOCS:
            continue
        for number, line in code_lines(path):
            for mention in MENTION.finditer(line):
                if mention["name"] in names and mention["path"] != "docs/":
                    problems.append(f"{where(path, number)}: {mention[0]!r} must be written docs/{mention['name']}.md")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("markdown", LINKED_MARKDOWN)
def test_relative_markdown_links_resolve(markdown):
    source = ROOT / markdown
    problems = []
    for number, line in code_lines(source):
        for link in LINK.finditer(line):
            target = link["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            resolved = (source.parent / file_part).resolve() if file_part else source
            if not resolved.exists():
                problems.append(f"{where(source, number)}: {target} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in doc_index(resolved)[1]:
                problems.append(f"{where(source, number)}: {target}: no anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_no_text_points_outside_the_repository_for_docs():
    problems = [
        f"{where(path, number)}: mentions {needle}"
        for path in project_files()
        for number, line in code_lines(path)
        for needle in FORBIDDEN
        if needle in line
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_stale_references(tmp_path):
    """The patterns above on made-up lines: the test is only as good as what REFERENCE and doc_index see."""
    refs = [m.groupdict() for m in REFERENCE.finditer("see method.md §4.3-§4.6 and `docs/datasets.md` §6.5-6.6, §8.")]
    assert [(r["prefix"], r["name"], SECTION_NUMBER.findall(r["sections"])) for r in refs] == [
        ("", "method", ["4.3", "4.6"]),
        ("docs/", "datasets", ["6.5", "6.6", "8"]),
    ]
    assert REFERENCE.search("benchmarks.md#mc-rules")["anchor"] == "mc-rules"
    doc = tmp_path / "x.md"
    doc.write_text('# Title\n<a id="here"></a>\n## 2. Part\n### 2.1 Sub part\n#### 9. An entry\n```\n## 7. code\n```\n')
    sections, anchors = doc_index(doc)
    assert sections == {"2", "2.1"}
    assert {"here", "title", "2-part", "21-sub-part"} <= anchors


# Repository files the Markdown names in backticks (`training/vlpo/algos.py`, `configs/sft_*.yaml`,
# `tests/corpus/test_adapter_<format>.py`): templates become globs, and at least one file must match.
REPO_FILE = re.compile(
    r"`((?:corpus|training|evaluation|pipelines|configs|experiments|benchmarks|scripts|docs|tests)/[\w./<>*-]*"
    r"\.(?:py|yaml|md|png|toml))[`:]"
)
MODULE = re.compile(r"\bmedlvr(?:\.\w+)+")


def resolves(dotted: str) -> bool:
    """`medlvr.a.b.c` is a module, or an attribute path inside the longest importable module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("markdown", LINKED_MARKDOWN)
def test_named_files_and_modules_exist(markdown):
    source = ROOT / markdown
    problems = []
    for number, line in code_lines(source):
        for named in REPO_FILE.findall(line):
            pattern = re.sub(r"<[^>]*>", "*", named)
            if not list(ROOT.glob(pattern)):
                problems.append(f"{where(source, number)}: no file {named}")
        for dotted in MODULE.findall(line):
            if not resolves(dotted.rstrip(".")):
                problems.append(f"{where(source, number)}: {dotted} does not import")
    assert not problems, "\n".join(problems)


def test_every_dataset_count_in_the_docs_is_the_catalogs():
    """The docs state the number of catalog datasets as "<N> datasets" ("<N> public datasets", "<N>-dataset"), and
    every such statement equals the shipped catalog's size (its YAML files, parsed independently): a 32nd catalog
    entry makes this test name each line to update, instead of leaving "31" behind unnoticed."""
    from tests.catalog_count import N_DATASETS

    files = [ROOT / "README.md", ROOT / "pipelines" / "README.md", *sorted(DOCS.glob("*.md")),
             ROOT / "deploy" / "dagster.yaml", ROOT / "pipelines" / "dagster_home" / "dagster.yaml"]
    stated = [(f"{path.relative_to(ROOT)}:{i}", int(m.group(1))) for path in files
              for i, line in enumerate(path.read_text().splitlines(), 1)
              for m in re.finditer(r"\b(\d+)(?: public)?[ -]datasets?\b", line)]
    assert len(stated) >= 10
    assert [where for where, n in stated if n != N_DATASETS] == []

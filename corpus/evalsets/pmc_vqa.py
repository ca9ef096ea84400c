"""PMC-VQA multiple choice (HF `xmcmic/PMC-VQA`; benchmarks.md §1.4). The test file is chosen explicitly:

* v1 `test_clean.csv` (2,000 items; the default, as in MedLVR and the Med-R1 family) or v1 `test.csv`:
  columns Figure_path, Question, Answer, Choice A..D, Answer_label (the gold letter). Choices carry a letter
  prefix ("A:Diffuse uptake", sometimes " B: ...") which is removed.
* v2 `test_2.csv`: columns <index>, Figure_path, Caption, Question, Choice A..D, Answer (the gold letter), split.

Images: `figures/<Figure_path>` or a member with that basename in `images_2.zip` (v2), `images/<Figure_path>`
or `images.zip` (v1); each version falls back to the other's locations (as MedEvalKit does).
Sample id "<file stem>-<row>"; tags: version, test_file, row (and split for v2).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from medlvr.corpus.evalsets.base import (BenchmarkError, Sample, file_uri, register, require_dir, zip_members_by_name,
                                        zip_uri)

NAME = "pmc_vqa"
TEST_FILES = {"test_clean.csv": "v1", "test.csv": "v1", "test_2.csv": "v2"}
LETTERS = ("A", "B", "C", "D")
COLUMNS = {
    "v1": ("Figure_path", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"),
    "v2": ("Figure_path", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer"),
}
# where images are looked for, in order: extracted folder or zip (members indexed by basename)
IMAGE_SOURCES = {"v1": ("images", "images.zip", "figures", "images_2.zip"),
                 "v2": ("figures", "images_2.zip", "images", "images.zip")}


def strip_choice(letter: str, text: str) -> str:
    """' A:Diffuse uptake' -> 'Diffuse uptake' (only the prefix of this choice's own letter)."""
    return re.sub(rf"^\s*{letter}\s*[:.)]\s*", "", text or "").strip()


def _source(root: Path, name: str):
    path = root / name
    if name.endswith(".zip"):
        if not path.is_file():
            return None
        index = zip_members_by_name(path, "PMC-VQA")
        return lambda fig: zip_uri(path, index[Path(fig).name]) if Path(fig).name in index else None
    if not path.is_dir():
        return None
    return lambda fig: file_uri(path / fig) if (path / fig).is_file() else None


def _image_resolver(root: Path, version: str):
    sources = [f for f in (_source(root, n) for n in IMAGE_SOURCES[version]) if f is not None]
    if not sources:
        first = IMAGE_SOURCES[version]
        raise BenchmarkError(f"PMC-VQA: expected images in {root}/{first[0]}/ (extracted) or {root / first[1]}")

    def resolve(fig: str) -> str | None:
        for f in sources:
            uri = f(fig)
            if uri is not None:
                return uri
        return None

    return resolve


def load_pmc_vqa(root: Path, test_file: str = "test_clean.csv") -> Iterator[Sample]:
    root = require_dir(root, "PMC-VQA")
    if test_file not in TEST_FILES:
        raise BenchmarkError(f"PMC-VQA: test_file must be one of {sorted(TEST_FILES)}, not {test_file!r}")
    version = TEST_FILES[test_file]
    path = root / test_file
    if not path.is_file():
        raise BenchmarkError(f"PMC-VQA: expected {path} ({version} test file)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS[version] if c not in (reader.fieldnames or ())]
        if missing:
            raise BenchmarkError(f"PMC-VQA: {path} lacks columns {missing} (expected {list(COLUMNS[version])})")
        rows = list(reader)
    image = _image_resolver(root, version)
    gold_col = "Answer_label" if version == "v1" else "Answer"
    stem = path.stem
    out = []
    for i, row in enumerate(rows):
        options = tuple((L, strip_choice(L, row[f"Choice {L}"])) for L in LETTERS)
        gold = (row[gold_col] or "").strip().upper().rstrip(":.")
        if gold not in LETTERS:
            raise BenchmarkError(f"PMC-VQA: row {i} of {path}: {gold_col} {row[gold_col]!r} is not a letter A-D")
        uri = image(row["Figure_path"].strip())
        if uri is None:
            raise BenchmarkError(f"PMC-VQA: image {row['Figure_path']!r} of row {i} of {path} not found under {root}")
        tags = {"version": version, "test_file": test_file, "row": i}
        if version == "v2" and row.get("split"):
            tags["split"] = row["split"]
        out.append(Sample(NAME, f"{stem}-{i}", row["Question"].strip(), "mc", gold, options, (uri,), tags))
    return iter(out)


register(NAME, load_pmc_vqa)

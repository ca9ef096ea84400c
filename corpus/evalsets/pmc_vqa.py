"""PMC-VQA multiple choice (HF `xmcmic/PMC-VQA`; docs/benchmarks.md §1.4). The test file is chosen explicitly:

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

from medlvr.corpus.evalsets import sample_files
from medlvr.corpus.evalsets.base import (BenchmarkError, Sample, file_in_root, file_uri, require_dir,
                                        zip_members_by_name, zip_uri)
from medlvr.corpus.evalsets.registry import register_benchmark

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

    def in_folder(fig: str) -> str | None:
        file = file_in_root(root, f"{name}/{fig}", f"PMC-VQA: Figure_path {fig!r}")
        return file_uri(file) if file.is_file() else None

    return in_folder


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


# ---- sample writer ------------------------------------------------------------------------------------------------
# Sample PMC-VQA: v1 `test_clean.csv` with images extracted under `images/`, and v2 `test_2.csv` with its
# `images_2.zip` (members `figures/<Figure_path>`). Choices keep the distributed quirks: "A:" prefixes, a
# leading space before some of them, and option texts that contain other option texts.


# (figure, question, answer text, choices A-D as distributed, answer letter)
V1 = [
    ("PMC100_Fig1_1.jpg", "What is the uptake pattern?", "Diffuse uptake",
     ["A:Diffuse uptake", " B:Focal uptake", " C:No uptake", " D:Rim uptake"], "A"),
    ("PMC100_Fig1_1.jpg", "Which imaging modality was used?", "CT with contrast",
     ["A:CT", " B:CT with contrast", " C:MRI", " D:PET"], "B"),
    ("PMC200_Fig3_2.jpg", "What does the arrow indicate?", "A cyst",
     ["A:A tumour", "B:A cyst", "C:A vessel", "D:A calcification"], "B"),
    ("PMC300_Fig2_1.jpg", "Where is the lesion?", "Left kidney",
     ["A: Right kidney", " B: Liver", " C: Left kidney", " D: Spleen"], "C"),
]
V2 = [
    ("PMC400_F1.jpg", "Fig 1. Axial CT.", "What is shown in the image?",
     ["A:Liver cyst", "B:Renal stone", "C:Appendicitis", "D:Normal study"], "B"),
    ("PMC500_F2.jpg", "Fig 2. Chest radiograph.", "Which side is the effusion on?",
     [" A:Left", " B:Right", " C:Both", " D:Neither"], "A"),
    ("PMC500_F2.jpg", "Fig 2. Chest radiograph.", "What is the heart size?",
     ["A:Normal", "B:Enlarged", "C:Small", "D:Not visible"], "D"),
]


def write_pmc_vqa(root: Path) -> int:
    with (root / "test_clean.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer_label"])
        for fig, q, a, ch, label in V1:
            w.writerow([fig, q, a, *ch, label])
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted({r[0] for r in V1})):
        (images / name).write_bytes(sample_files.image_bytes(i, "JPEG"))
    with (root / "test_2.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer", "split"])
        for i, (fig, cap, q, ch, label) in enumerate(V2):
            w.writerow([i, fig, cap, q, *ch, label, "test"])
    sample_files.write_zip(root / "images_2.zip",
                           {f"figures/{name}": sample_files.image_bytes(10 + i, "JPEG")
                            for i, name in enumerate(sorted({r[0] for r in V2}))})
    return len(V1)


register_benchmark(NAME, load_pmc_vqa, sample_writers={"pmc_vqa": write_pmc_vqa},
                   efficiency_quota=100, rank=3)

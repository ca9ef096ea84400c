"""MedXpertQA multimodal (HF `TsinghuaC3I/MedXpertQA`, config MM; docs/benchmarks.md §1.6).

Layout: `MM/test.jsonl` (or `MM/dev.jsonl`) and `images.zip` at the root (or that zip extracted as `images/`).
Each JSON line: id ("MM-..."), question (ALREADY contains "Answer Choices: (A) ... (E) ..."), options (dict
letter -> text), label (gold letter), images (file names inside images.zip), medical_task, body_system,
question_type. Images are read straight from the zip through a basename index (the lmms-eval way).

Samples: kind "mc", question as distributed, tags["options_in_question"] = True so that prompt builders do
not append the options a second time (the MedEvalKit duplication); tags medical_task, body_system,
question_type, split. Sample id = the dataset id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from medlvr.corpus.evalsets import sample_files
from medlvr.corpus.evalsets.base import (BenchmarkError, Sample, file_uri, files_in_root, require_dir,
                                        zip_members_by_name, zip_uri)
from medlvr.corpus.evalsets.registry import register_benchmark

NAME = "medxpertqa_mm"
REQUIRED = ("id", "question", "options", "label", "images")
TAG_KEYS = ("medical_task", "body_system", "question_type")


def _image_resolver(root: Path):
    if (root / "images").is_dir():
        base = root / "images"
        index = {p.name: p for p in files_in_root(base, root)}
        return lambda name: file_uri(index[Path(name).name]) if Path(name).name in index else None
    archive = root / "images.zip"
    if not archive.is_file():
        raise BenchmarkError(f"MedXpertQA: expected {archive} (or it extracted as {root / 'images'}/)")
    index = zip_members_by_name(archive, "MedXpertQA")
    return lambda name: zip_uri(archive, index[Path(name).name]) if Path(name).name in index else None


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"MedXpertQA: expected {path} (JSON lines)")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"MedXpertQA: line {n} of {path} is not valid JSON ({e})") from e
        missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise BenchmarkError(f"MedXpertQA: line {n} of {path} lacks keys {missing} (expected {list(REQUIRED)})")
        if not isinstance(rec["options"], dict) or not isinstance(rec["images"], list):
            raise BenchmarkError(f"MedXpertQA: line {n} of {path}: options must be a dict and images a list")
        out.append(rec)
    return out


def load_medxpertqa(root: Path, split: str = "test") -> Iterator[Sample]:
    root = require_dir(root, "MedXpertQA")
    if split not in ("test", "dev"):
        raise BenchmarkError(f"MedXpertQA: unknown split {split!r} (expected 'test' or 'dev')")
    path = root / "MM" / f"{split}.jsonl"
    recs = _records(path)
    image = _image_resolver(root)
    out, seen = [], set()
    for rec in recs:
        sid = str(rec["id"])
        if sid in seen:
            raise BenchmarkError(f"MedXpertQA: duplicate id {sid} in {path}")
        seen.add(sid)
        options = tuple((str(k).upper(), str(v)) for k, v in rec["options"].items())
        gold = str(rec["label"]).strip().upper()
        if gold not in dict(options):
            raise BenchmarkError(f"MedXpertQA: {sid}: label {rec['label']!r} is not an option letter")
        uris = []
        for name in rec["images"]:
            uri = image(name)
            if uri is None:
                raise BenchmarkError(f"MedXpertQA: image {name!r} of {sid} not found in the images of {root}")
            uris.append(uri)
        tags = {"split": split, "options_in_question": True, **{k: rec[k] for k in TAG_KEYS if k in rec}}
        out.append(Sample(NAME, sid, rec["question"], "mc", gold, options, tuple(uris), tags))
    return iter(out)


# ---- sample writer ------------------------------------------------------------------------------------------------
# Sample MedXpertQA MM: `MM/test.jsonl`, `MM/dev.jsonl` and a real `images.zip` at the root. Questions
# already contain "Answer Choices: (A) ... (E) ..." as distributed; one question has two images.


OPTIONS = [
    ["Pneumothorax", "Pleural effusion", "Pneumonia", "Atelectasis", "Normal"],
    ["Osteosarcoma", "Ewing sarcoma", "Osteomyelitis", "Enchondroma", "Fracture"],
    ["Melanoma", "Basal cell carcinoma", "Seborrheic keratosis", "Nevus", "Psoriasis"],
    ["Increase the dose", "Stop the drug", "Add a diuretic", "Repeat imaging", "Observe"],
]
STEMS = [
    ("A 60-year-old man presents with dyspnea. What is the finding?", "B", ["MM-1-a.jpeg"], "Diagnosis",
     "Respiratory", "Understanding"),
    ("A 14-year-old has knee pain. Based on both images, what is the diagnosis?", "A",
     ["MM-2-a.jpeg", "MM-2-b.jpeg"], "Diagnosis", "Skeletal", "Reasoning"),
    ("A pigmented lesion is shown. What is the most likely diagnosis?", "D", ["MM-3-a.jpeg"], "Diagnosis",
     "Integumentary", "Understanding"),
    ("Given the lab trend in the figure, what is the next step?", "C", ["MM-4-a.jpeg"], "Treatment",
     "Cardiovascular", "Reasoning"),
]


def _record(i: int, stem, options, split: str) -> dict:
    q, label, images, task, system, qtype = stem
    letters = "ABCDE"
    choices = " ".join(f"({L}) {t}" for L, t in zip(letters, options))
    return {"id": f"MM-{i}" if split == "test" else f"MM-dev-{i}", "question": f"{q}\nAnswer Choices: {choices}",
            "options": dict(zip(letters, options)), "label": label, "images": images, "medical_task": task,
            "body_system": system, "question_type": qtype}


def write_medxpertqa(root: Path) -> int:
    (root / "MM").mkdir(parents=True, exist_ok=True)
    test = [_record(i + 1, s, o, "test") for i, (s, o) in enumerate(zip(STEMS, OPTIONS))]
    dev = [_record(1, STEMS[0], OPTIONS[0], "dev")]
    for name, recs in (("test", test), ("dev", dev)):
        (root / "MM" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    names = sorted({n for s in STEMS for n in s[2]})
    sample_files.write_zip(root / "images.zip",
                           {f"images/{n}": sample_files.image_bytes(i, "JPEG") for i, n in enumerate(names)})
    return len(test)


register_benchmark(NAME, load_medxpertqa, sample_writers={"medxpertqa": write_medxpertqa},
                   data_dir="medxpertqa", efficiency_quota=85, rank=5)

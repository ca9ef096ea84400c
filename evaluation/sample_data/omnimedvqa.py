"""Write a miniature OmniMedVQA open-access tree (benchmarks.md §1.1), and optionally Med-R1-style split files.

    write_omnimedvqa(out_dir, seed=0, per_modality=5, medr1_splits=True) -> out_dir

Produces `QA_information/Open-access/<source>.json` (one file per fake source dataset, records with the real
keys; `gt_answer` is the option TEXT; 2-, 3- and 4-option questions; one record spelled with `modality` instead of
`modality_type`, as in the real `Chest CT Scan.json`), small PNGs under `Images/<source>/`, and with
`medr1_splits` a `Splits/modality/{train,test}/<modality>_{train,test}.json` set ({"image", "problem",
"solution"} records, options inlined as `Q A)x, B)y`). Deterministic for a seed; no network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

# (raw modality_type as spelled in the data, source dataset, question templates with (options, answer index))
_SOURCES = [
    ("CT(Computed Tomography)", "Chest CT Scan"),
    ("MR (Mag-netic Resonance Imaging)", "RadImageNet"),
    ("X-Ray", "MIAS"),
    ("ultrasound", "BUSI"),
    ("Dermoscopy", "HAM10000"),
    ("Fundus Photography", "ACRIMA"),
    ("OCT (Optical Coherence Tomography", "OCTID"),
    ("Microscopy Images", "MHSMA"),
]
_QUESTIONS = [
    ("Modality Recognition", "What imaging technique is utilized to capture this picture?",
     ["{mod}", "Echocardiogram", "Mammography", "Nuclear medicine"]),
    ("Anatomy Identification", "Which organ is shown in this image?", ["liver", "kidney", "spleen", "lung"]),
    ("Disease Diagnosis", "Is there evidence of disease in this image?", ["yes", "no"]),
    ("Lesion Grading", "What is the grade of the lesion?", ["mild", "moderate", "severe"]),
]


def _image(path: Path, rng: np.random.Generator, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(path)


def write_omnimedvqa(out_dir: str | Path, seed: int = 0, per_modality: int = 5, medr1_splits: bool = True) -> Path:
    out = Path(out_dir)
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    qa_dir = out / "QA_information" / "Open-access"
    qa_dir.mkdir(parents=True, exist_ok=True)
    medr1: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    qid = 0
    for raw_mod, source in _SOURCES:
        records = []
        for i in range(per_modality):
            qtype, question, options = _QUESTIONS[i % len(_QUESTIONS)]
            options = [o.format(mod=raw_mod.split("(")[0].strip() or raw_mod) for o in options]
            prng.shuffle(options)
            answer = options[prng.randrange(len(options))]
            image_rel = f"Images/{source}/{source.replace(' ', '_')}_{i:03d}.png"
            _image(out / image_rel, rng)
            rec = {"dataset": source, "question_id": f"{source}_{qid}", "question_type": qtype,
                   "question": question, "gt_answer": answer, "image_path": image_rel,
                   **{f"option_{'ABCD'[k]}": o for k, o in enumerate(options)}, "modality_type": raw_mod}
            if source == "Chest CT Scan" and i == 0:  # the real data has one record keyed `modality`
                rec["modality"] = rec.pop("modality_type")
            records.append(rec)
            qid += 1
            part = "test" if i % 5 == 0 else "train"
            problem = question + " " + ", ".join(f"{'ABCD'[k]}){o}" for k, o in enumerate(options))
            letter = "ABCD"[options.index(answer)]
            medr1[part].setdefault(raw_mod, []).append(
                {"image": image_rel, "problem": problem, "solution": f"<answer> {letter} </answer>"})
        (qa_dir / f"{source}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    if medr1_splits:
        for part, by_mod in medr1.items():
            d = out / "Splits" / "modality" / part
            d.mkdir(parents=True, exist_ok=True)
            for raw_mod, recs in by_mod.items():
                (d / f"{raw_mod}_{part}.json").write_text(json.dumps(recs, indent=1), encoding="utf-8")
    return out


def _writer(root: Path) -> int:
    """Package-writer contract (evaluation/sample_data/__init__.py): returns the number of test samples the
    loader yields with its defaults (seeded 80/20 split: round(0.2 * 5) = 1 per modality)."""
    write_omnimedvqa(root, seed=0, per_modality=5)
    return 8


WRITERS = {"omnimedvqa": _writer}

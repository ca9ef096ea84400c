"""Sample MedXpertQA MM: `MM/test.jsonl`, `MM/dev.jsonl` and a real `images.zip` at the root. Questions
already contain "Answer Choices: (A) ... (E) ..." as distributed; one question has two images."""

from __future__ import annotations

import json
from pathlib import Path

from medlvr.evaluation.sample_data import image_bytes, write_zip

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
    write_zip(root / "images.zip", {f"images/{n}": image_bytes(i, "JPEG") for i, n in enumerate(names)})
    return len(test)


WRITERS = {"medxpertqa": write_medxpertqa}

"""Sample PMC-VQA: v1 `test_clean.csv` with images extracted under `images/`, and v2 `test_2.csv` with its
`images_2.zip` (members `figures/<Figure_path>`). Choices keep the distributed quirks: "A:" prefixes, a
leading space before some of them, and option texts that contain other option texts."""

from __future__ import annotations

import csv
from pathlib import Path

from medlvr.evaluation.sample_data import image_bytes, write_zip

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
        (images / name).write_bytes(image_bytes(i, "JPEG"))
    with (root / "test_2.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer", "split"])
        for i, (fig, cap, q, ch, label) in enumerate(V2):
            w.writerow([i, fig, cap, q, *ch, label, "test"])
    write_zip(root / "images_2.zip",
              {f"figures/{name}": image_bytes(10 + i, "JPEG") for i, name in enumerate(sorted({r[0] for r in V2}))})
    return len(V1)


WRITERS = {"pmc_vqa": write_pmc_vqa}

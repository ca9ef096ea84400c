"""Sample MMMU Health & Medicine: `<Subject>/validation-00000-of-00001.parquet` for the five subjects, with the
HF columns (options as a Python-list string, image_1..image_7 HF Image structs or null). Includes a question
with two images, one whose options refer to images, an open question, and a question without placeholders."""

from __future__ import annotations

from pathlib import Path

from medlvr.evaluation.sample_data import image_bytes, write_hf_parquet

# subject -> rows: (question, options string, answer, question_type, number of images, subfield)
ROWS = {
    "Basic_Medical_Science": [
        ("Which structure is shown in <image 1>?", "['Nephron', 'Alveolus', 'Villus', 'Neuron']", "A",
         "multiple-choice", 1, "Histology"),
        ("Which panel shows mitosis? <image 1>", "['<image 2>', '<image 3>']", "B", "multiple-choice", 3,
         "Cell Biology"),
    ],
    "Clinical_Medicine": [
        ("Compare <image 1> and <image 2>. What has changed between the two scans?",
         "['The effusion has resolved', 'A new mass appeared', 'Nothing changed', 'The heart enlarged']", "A",
         "multiple-choice", 2, "Clinical Radiology"),
    ],
    "Diagnostics_and_Laboratory_Medicine": [
        ("<image 1> What is the most likely diagnosis?", "['Pneumonia', 'Tuberculosis', 'Sarcoidosis']", "C",
         "multiple-choice", 1, "Radiology"),
    ],
    "Pharmacy": [
        ("<image 1> What is the half-life in hours of the drug in the plot?", "[]", "4.5", "open", 1,
         "Pharmacokinetics"),
    ],
    "Public_Health": [
        ("In a cohort of 200, 50 develop disease. What is the cumulative incidence?",
         "['0.1', '0.25', '0.5', '0.75']", "B", "multiple-choice", 1, "Epidemiology"),
    ],
}


def write_mmmu(root: Path) -> int:
    n = 0
    for s_idx, (subject, rows) in enumerate(ROWS.items()):
        cols: dict[str, list] = {c: [] for c in ("id", "question", "options", "explanation")}
        cols.update({f"image_{k}": [] for k in range(1, 8)})
        cols.update({c: [] for c in ("img_type", "answer", "topic_difficulty", "question_type", "subfield")})
        for i, (q, opts, ans, qtype, n_img, sub) in enumerate(rows, 1):
            cols["id"].append(f"validation_{subject}_{i}")
            cols["question"].append(q)
            cols["options"].append(opts)
            cols["explanation"].append("")
            for k in range(1, 8):
                seed = 100 * s_idx + 10 * i + k
                cols[f"image_{k}"].append({"bytes": image_bytes(seed), "path": None} if k <= n_img else None)
            cols["img_type"].append("['Photographs']")
            cols["answer"].append(ans)
            cols["topic_difficulty"].append("Medium")
            cols["question_type"].append(qtype)
            cols["subfield"].append(sub)
            n += 1
        write_hf_parquet(root / subject / "validation-00000-of-00001.parquet", cols,
                         tuple(f"image_{k}" for k in range(1, 8)))
    return n


WRITERS = {"mmmu": write_mmmu}

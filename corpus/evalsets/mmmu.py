"""MMMU Health & Medicine (HF `MMMU/MMMU`, one config per subject; docs/benchmarks.md §1.5).

Layout: `<root>/<Subject>/<split>-00000-of-00001.parquet` for the five subjects below. Columns: id, question,
options (a string holding a Python list, parsed with ast.literal_eval), answer (letter for multiple choice),
question_type (multiple-choice | open), image_1..image_7 (HF Image struct or null), subfield, img_type,
topic_difficulty. Every `<image k>` placeholder of the question and the options is resolved, distinct k in
ascending order (the lmms-eval rule), so multi-image questions keep all images (MedEvalKit drops all but
image_1). A question without placeholders gets its non-null image columns in order.

Samples: kind "mc" (options lettered A, B, ...) or "open"; id = the dataset id
("validation_Clinical_Medicine_1"); tags: subject, split, question_type, subfield, img_type,
topic_difficulty. The test split has no gold answers ("?") and is refused.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator

from medlvr.corpus.evalsets import sample_files
from medlvr.corpus.evalsets.base import BenchmarkError, Sample, parquet_uri, read_parquet_checked, require_dir
from medlvr.corpus.evalsets.registry import register_benchmark

NAME = "mmmu_hm"
SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
            "Public_Health")
IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))
TEXT_COLUMNS = ("id", "question", "options", "answer", "question_type")
EXTRA_TAGS = ("subfield", "img_type", "topic_difficulty")
_PLACEHOLDER = re.compile(r"<image (\d+)>")


def parse_options(raw, where: str) -> list[str]:
    if isinstance(raw, list):
        return [str(o) for o in raw]
    try:
        value = ast.literal_eval(raw) if raw not in (None, "") else []
    except (ValueError, SyntaxError) as e:
        raise BenchmarkError(f"MMMU: {where}: options {raw!r} is not a Python list literal") from e
    if not isinstance(value, list):
        raise BenchmarkError(f"MMMU: {where}: options must be a list, found {type(value).__name__}")
    return [str(o) for o in value]


def image_columns(question: str, options: list[str], present: list[str], where: str) -> list[str]:
    ks = sorted({int(k) for k in _PLACEHOLDER.findall(" ".join([question, *options]))})
    if not ks:
        return present
    cols = [f"image_{k}" for k in ks]
    absent = [c for c in cols if c not in present]
    if absent:
        raise BenchmarkError(f"MMMU: {where} refers to {absent} but those image cells are empty or missing")
    return cols


def _subject_file(root: Path, subject: str, split: str) -> Path:
    found = sorted((root / subject).glob(f"{split}-*.parquet"))
    if not found:
        raise BenchmarkError(f"MMMU: expected {root / subject}/{split}-00000-of-00001.parquet")
    return found[0]


def _load_subject(root: Path, subject: str, split: str) -> list[Sample]:
    path = _subject_file(root, subject, split)
    table = read_parquet_checked(path, "MMMU", TEXT_COLUMNS)
    img_cols = [c for c in IMAGE_COLUMNS if c in table.column_names]
    nonnull = {c: table.column(c).is_valid().to_pylist() for c in img_cols}
    texts = {c: table.column(c).to_pylist() for c in (*TEXT_COLUMNS, *EXTRA_TAGS) if c in table.column_names}
    out = []
    for i in range(table.num_rows):
        row = {c: v[i] for c, v in texts.items()}
        where = f"{path} row {i} ({row['id']})"
        options = parse_options(row["options"], where)
        present = [c for c in img_cols if nonnull[c][i]]
        cols = image_columns(row["question"], options, present, where)
        qtype = str(row["question_type"])
        answer = str(row["answer"]).strip()
        if answer == "?":
            raise BenchmarkError(f"MMMU: {where} has no gold answer ('?'); the {split} split cannot be scored")
        tags = {"subject": subject, "split": split, "question_type": qtype}
        tags.update({k: row[k] for k in EXTRA_TAGS if k in row and row[k] is not None})
        uris = tuple(parquet_uri(path, i, c) for c in cols)
        if qtype == "multiple-choice":
            letters = [chr(ord("A") + j) for j in range(len(options))]
            if answer.upper() not in letters:
                raise BenchmarkError(f"MMMU: {where}: answer {answer!r} is not one of the option letters {letters}")
            out.append(Sample(NAME, row["id"], row["question"], "mc", answer.upper(),
                              tuple(zip(letters, options)), uris, tags))
        else:
            out.append(Sample(NAME, row["id"], row["question"], "open", answer, (), uris, tags))
    return out


def load_mmmu(root: Path, split: str = "validation", subjects: tuple[str, ...] = SUBJECTS) -> Iterator[Sample]:
    root = require_dir(root, "MMMU Health & Medicine")
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        raise BenchmarkError(f"MMMU: {unknown} are not Health & Medicine subjects (expected some of {SUBJECTS})")
    absent = [s for s in subjects if not (root / s).is_dir()]
    if absent:
        raise BenchmarkError(f"MMMU: expected one directory per subject under {root}; missing {absent}")
    out: list[Sample] = []
    for s in subjects:
        out.extend(_load_subject(root, s, split))
    if len({s.sample_id for s in out}) != len(out):
        raise BenchmarkError(f"MMMU: duplicate ids under {root}")
    return iter(out)


# ---- sample writer ------------------------------------------------------------------------------------------------
# Sample MMMU Health & Medicine: `<Subject>/validation-00000-of-00001.parquet` for the five subjects, with the
# HF columns (options as a Python-list string, image_1..image_7 HF Image structs or null). Includes a question
# with two images, one whose options refer to images, an open question, and a question without placeholders.


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
                image = {"bytes": sample_files.image_bytes(seed), "path": None}
                cols[f"image_{k}"].append(image if k <= n_img else None)
            cols["img_type"].append("['Photographs']")
            cols["answer"].append(ans)
            cols["topic_difficulty"].append("Medium")
            cols["question_type"].append(qtype)
            cols["subfield"].append(sub)
            n += 1
        sample_files.write_hf_parquet(root / subject / "validation-00000-of-00001.parquet", cols,
                         tuple(f"image_{k}" for k in range(1, 8)))
    return n


register_benchmark(NAME, load_mmmu, sample_writers={"mmmu": write_mmmu},
                   data_dir="mmmu", efficiency_quota=100, efficiency_kind="mc", rank=4,
                   table2_subset="mc")  # its multiple-choice items

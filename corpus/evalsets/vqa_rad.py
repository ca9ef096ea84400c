"""VQA-RAD, from either release (docs/benchmarks.md §1.3):

* HF `flaviagiammarino/vqa-rad`: `data/<split>-00000-of-00001-<hash>.parquet` (or the parquet directly in the
  root) with columns image (HF Image struct {bytes, path}), question, answer. Sample id "<split>-<row>".
* OSF: `VQA_RAD Dataset Public.json` (list of records with qid, image_name, image_organ, answer, answer_type,
  question_type, question, phrase_type) and `VQA_RAD Image Folder/<image_name>`. Test rows are those whose
  phrase_type starts with "test" (test_freeform / test_para). Sample id "qid-<qid>".

`source="auto"` takes the OSF JSON when present, else the parquet. Gold yes/no answers (any case) become kind
"yesno" and tags["closed"] = True: the closed yes/no subset every loader uses. The OSF answer_type CLOSED also
covers non-yes/no items (kind "open", closed False); it is kept as tags["answer_type"].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from medlvr.corpus.evalsets import sample_files
from medlvr.corpus.evalsets.base import (BenchmarkError, Sample, file_in_root, file_uri, parquet_uri, read_json_list,
                                        read_parquet_checked, require_dir)
from medlvr.corpus.evalsets.registry import register_benchmark

NAME = "vqa_rad"
OSF_JSON = "VQA_RAD Dataset Public.json"
OSF_IMAGES = "VQA_RAD Image Folder"
HF_COLUMNS = ("image", "question", "answer")
OSF_KEYS = ("qid", "image_name", "answer", "answer_type", "question", "phrase_type")


def _sample(sid: str, question: str, answer, uri: str, tags: dict) -> Sample:
    answer = str(answer).strip()
    yesno = answer.lower() in ("yes", "no")
    tags = {**tags, "closed": yesno, "subset": "closed" if yesno else "other"}
    return Sample(NAME, sid, str(question), "yesno" if yesno else "open", answer.lower() if yesno else answer,
                  images=(uri,), tags=tags)


def _hf_parquet(root: Path, split: str) -> Path:
    found = sorted(root.glob(f"data/{split}-*.parquet")) or sorted(root.glob(f"{split}-*.parquet"))
    if not found:
        raise BenchmarkError(
            f"VQA-RAD: expected {root}/data/{split}-00000-of-00001-*.parquet (HF release) or "
            f"{root / OSF_JSON} (OSF release)")
    if len(found) > 1:
        raise BenchmarkError(f"VQA-RAD: several {split} parquet files under {root}: {[p.name for p in found]}")
    return found[0]


def _load_hf(root: Path, split: str) -> list[Sample]:
    path = _hf_parquet(root, split)
    table = read_parquet_checked(path, "VQA-RAD", HF_COLUMNS, columns=["question", "answer"])
    rows = zip(table.column("question").to_pylist(), table.column("answer").to_pylist())
    return [
        _sample(f"{split}-{i}", q, a, parquet_uri(path, i, "image"), {"split": split, "release": "hf", "row": i})
        for i, (q, a) in enumerate(rows)
    ]


def _load_osf(root: Path, split: str) -> list[Sample]:
    path = root / OSF_JSON
    data = read_json_list(path, "VQA-RAD")
    images = root / OSF_IMAGES
    if not images.is_dir():
        raise BenchmarkError(f"VQA-RAD: expected the image folder {images}/ next to {OSF_JSON}")
    out, seen = [], set()
    for i, rec in enumerate(data):
        missing = [k for k in OSF_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise BenchmarkError(f"VQA-RAD: record {i} of {path} lacks keys {missing} (expected {list(OSF_KEYS)})")
        is_test = str(rec["phrase_type"]).startswith("test")
        if is_test != (split == "test"):
            continue
        sid = f"qid-{rec['qid']}"
        if sid in seen:
            raise BenchmarkError(f"VQA-RAD: duplicate qid {rec['qid']} in {path}")
        seen.add(sid)
        img = file_in_root(root, f"{OSF_IMAGES}/{rec['image_name']}", f"VQA-RAD: image_name {rec['image_name']!r}")
        if not img.is_file():
            raise BenchmarkError(f"VQA-RAD: image {img} of qid {rec['qid']} not found")
        tags = {"split": split, "release": "osf", "qid": rec["qid"],
                "answer_type": str(rec["answer_type"]).strip().lower(),
                "question_type": str(rec.get("question_type", "")).strip(),
                "organ": str(rec.get("image_organ", "")).strip(), "phrase_type": rec["phrase_type"]}
        out.append(_sample(sid, rec["question"], rec["answer"], file_uri(img), tags))
    return out


def load_vqa_rad(root: Path, split: str = "test", source: str = "auto") -> Iterator[Sample]:
    root = require_dir(root, "VQA-RAD")
    if split not in ("test", "train"):
        raise BenchmarkError(f"VQA-RAD: unknown split {split!r} (expected 'test' or 'train')")
    if source not in ("auto", "hf", "osf"):
        raise BenchmarkError(f"VQA-RAD: unknown source {source!r} (expected 'auto', 'hf' or 'osf')")
    if source == "osf" or (source == "auto" and (root / OSF_JSON).is_file()):
        if not (root / OSF_JSON).is_file():
            raise BenchmarkError(f"VQA-RAD: expected {root / OSF_JSON} (OSF release)")
        return iter(_load_osf(root, split))
    return iter(_load_hf(root, split))


# ---- sample writer ------------------------------------------------------------------------------------------------
# Sample VQA-RAD in both releases.
#
# * `vqa_rad/`: the HF parquet release (`data/{train,test}-00000-of-00001-<hash>.parquet`, columns image (HF Image
#   struct), question, answer). Test: 3 yes/no in mixed case, 3 open; two questions share an image.
# * `vqa_rad_osf/`: the OSF release (`VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`), with train and
#   test rows (phrase_type), a CLOSED item whose answer is not yes/no, and an integer answer.


HF_TEST = [
    (1, "Is there evidence of a pneumothorax?", "no"),
    (1, "Is the heart enlarged?", "Yes"),
    (2, "Are the kidneys normal?", "yes"),
    (2, "Where is the lesion located?", "right lower lobe"),
    (3, "What imaging modality is used?", "CT"),
    (3, "Which side is the mass on, left or right?", "left"),
]
HF_TRAIN = [(4, "Is this an MRI?", "no"), (4, "What organ is this?", "brain")]

# (qid, image, organ, answer, answer_type, question_type, question, phrase_type)
OSF = [
    (1, "synpic100.jpg", "CHEST", "Yes", "CLOSED", "PRES", "Is there a pleural effusion?", "test_freeform"),
    (2, "synpic100.jpg", "CHEST", "No", "CLOSED", "PRES", "Is the effusion on the left?", "test_para"),
    (3, "synpic200.jpg", "HEAD", "Left", "CLOSED", "POS", "Is the lesion on the left or right?", "test_freeform"),
    (4, "synpic200.jpg", "HEAD", 2, "OPEN", "COUNT", "How many lesions are there?", "test_freeform"),
    (5, "synpic300.jpg", "ABD", "liver", "OPEN", "ORGAN", "What organ is enlarged?", "test_para"),
    (6, "synpic300.jpg", "ABD", "yes", "CLOSED", "PRES", "Is there ascites?", "freeform"),
    (7, "synpic300.jpg", "ABD", "CT", "OPEN", "MODALITY", "What modality is this?", "para"),
]


def _hf_columns(rows):
    images = {img: sample_files.image_bytes(img, "JPEG") for img, _, _ in rows}
    return {"image": [{"bytes": images[i], "path": f"synpic{i}.jpg"} for i, _, _ in rows],
            "question": [q for _, q, _ in rows], "answer": [a for _, _, a in rows]}


def write_hf(root: Path) -> int:
    sample_files.write_hf_parquet(root / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet",
                                  _hf_columns(HF_TEST), ("image",))
    sample_files.write_hf_parquet(root / "data" / "train-00000-of-00001-eb8844602202be60.parquet",
                                  _hf_columns(HF_TRAIN), ("image",))
    return len(HF_TEST)


def write_osf(root: Path) -> int:
    records = [
        {"qid": qid, "phrase_type": pt, "qid_linked_id": f"0{qid}", "image_case_url": "", "image_name": img,
         "image_organ": organ, "evaluation": "given", "question": q, "question_rephrase": "NULL",
         "question_relation": "NULL", "question_frame": "NULL", "question_type": qt, "answer": a,
         "answer_type": at}
        for qid, img, organ, a, at, qt, q, pt in OSF
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records, indent=1))
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted({r[1] for r in OSF}):
        (folder / name).write_bytes(sample_files.image_bytes(int(name[6:9]), "JPEG"))
    return sum(r[7].startswith("test") for r in OSF)


register_benchmark(NAME, load_vqa_rad, sample_writers={"vqa_rad": write_hf, "vqa_rad_osf": write_osf},
                   efficiency_quota=100, efficiency_kind="yesno", rank=2,
                   table2_subset="closed")  # as SLAKE: the closed yes/no questions

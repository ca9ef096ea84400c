"""VQA-RAD, from either release (benchmarks.md §1.3):

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

from pathlib import Path
from typing import Iterator


from medlvr.corpus.evalsets.base import (BenchmarkError, Sample, file_uri, parquet_uri, read_json_list,
                                        read_parquet_checked, register, require_dir)

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
        img = images / rec["image_name"]
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


register(NAME, load_vqa_rad)

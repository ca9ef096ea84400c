"""SLAKE (HF `BoKelvin/SLAKE`, plain files): `test.json` / `validation.json` / `train.json` (lists of records)
and `imgs.zip` (members `imgs/xmlabNNN/source.jpg`) or that zip extracted as `imgs/`.

Only English rows are kept (`q_lang == "en"`). Yes/no answers become kind "yesno" (gold lowercased), all
other answers kind "open" (including CLOSED questions such as "Which is bigger, left or right lung?").
tags["closed"] marks the closed yes/no subset (English, gold yes/no; docs/benchmarks.md §1.2); tags also carry
answer_type (closed/open), modality, location, content_type, base_type, qid, split, and the image's
detection boxes (`rois`, xyxy pixels, with `roi_labels`) when `detection.json` is present.
Sample id: "<split>-<qid>".
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Iterator

from medlvr.corpus.evalsets import sample_files
from medlvr.corpus.evalsets.base import (
    BenchmarkError,
    Sample,
    file_in_root,
    file_uri,
    image_bytes,
    read_json_list,
    require_dir,
    zip_uri,
)
from medlvr.corpus.evalsets.registry import register_benchmark

NAME = "slake"
SPLITS = {"test": "test.json", "validation": "validation.json", "train": "train.json"}
REQUIRED = ("img_name", "question", "answer", "q_lang", "answer_type", "qid")


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"SLAKE: expected {path.name} (a JSON list of QA records) in {path.parent}")
    data = read_json_list(path, "SLAKE")
    for i, rec in enumerate(data):
        missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise BenchmarkError(f"SLAKE: record {i} of {path} lacks keys {missing} (expected {list(REQUIRED)})")
    return data


def _image_resolver(root: Path):
    if (root / "imgs").is_dir():
        def in_folder(name: str) -> str | None:
            path = file_in_root(root, f"imgs/{name}", f"SLAKE: img_name {name!r}")
            return file_uri(path) if path.is_file() else None

        return in_folder
    archive = root / "imgs.zip"
    if archive.is_file():
        try:
            with zipfile.ZipFile(archive) as zf:
                members = set(zf.namelist())
        except zipfile.BadZipFile as e:
            raise BenchmarkError(f"SLAKE: {archive} is not a valid zip ({e})") from e

        def resolve(name: str) -> str | None:  # members are imgs/xmlabN/...; accept a zip without that prefix
            for member in (f"imgs/{name}", name):
                if member in members:
                    return zip_uri(archive, member)
            return None

        return resolve
    raise BenchmarkError(f"SLAKE: expected images as {root / 'imgs.zip'} or an extracted {root / 'imgs'}/")


def _detection_reader(root: Path):
    """`imgs/xmlabN/detection.json` beside each image, if present: [{"Liver": [x, y, w, h]}, ...] (xywh pixels of
    the source image; format from the SLAKE release [M]). Returns name -> (boxes xyxy, labels)."""
    image = _image_resolver(root)

    def read(img_name: str) -> tuple[list[list[float]], list[str]]:
        uri = image(str(Path(img_name).parent / "detection.json"))
        if uri is None:
            return [], []
        try:
            items = json.loads(image_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BenchmarkError(f"SLAKE: {uri} is not valid JSON ({e})") from e
        boxes, labels = [], []
        for item in items if isinstance(items, list) else []:
            for name, b in (item.items() if isinstance(item, dict) else ()):
                if isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) and b[2] > 0 and b[3] > 0:
                    boxes.append([float(b[0]), float(b[1]), float(b[0] + b[2]), float(b[1] + b[3])])
                    labels.append(str(name))
        return boxes, labels

    return read


def load_slake(root: Path, split: str = "test", lang: str = "en") -> Iterator[Sample]:
    """SLAKE samples of `split` in language `lang` ("en", "zh", or "all": both, as MedEvalKit scores it)."""
    root = require_dir(root, "SLAKE")
    if split not in SPLITS:
        raise BenchmarkError(f"SLAKE: unknown split {split!r} (expected one of {sorted(SPLITS)})")
    path = root / SPLITS[split]
    if split == "validation" and not path.is_file() and (root / "validate.json").is_file():
        path = root / "validate.json"  # the name before HF renamed it
    data = _records(path)
    image = _image_resolver(root)
    detections = _detection_reader(root)
    out, seen = [], set()
    for rec in data:
        if lang != "all" and rec["q_lang"] != lang:
            continue
        sid = f"{split}-{rec['qid']}"
        if sid in seen:
            raise BenchmarkError(f"SLAKE: duplicate qid {rec['qid']} in {path}")
        seen.add(sid)
        uri = image(rec["img_name"])
        if uri is None:
            raise BenchmarkError(f"SLAKE: image imgs/{rec['img_name']} of qid {rec['qid']} not found under {root}")
        answer = str(rec["answer"]).strip()
        yesno = answer.lower() in ("yes", "no")
        tags = {
            "split": split,
            "qid": rec["qid"],
            "answer_type": str(rec["answer_type"]).strip().lower(),
            "answer_raw": str(rec["answer"]),  # as released (case kept): MedEvalKit's protocol judges it as is
            "closed": yesno,
            "subset": "closed" if yesno else "other",
        }
        for k in ("modality", "location", "content_type", "base_type"):
            if k in rec:
                tags[k] = rec[k]
        rois, roi_labels = detections(rec["img_name"])
        if rois:  # organ / lesion boxes of the image: drawn on the Fig. 3 attention heatmaps
            tags["rois"], tags["roi_labels"] = rois, roi_labels
        out.append(
            Sample(NAME, sid, rec["question"], "yesno" if yesno else "open", answer.lower() if yesno else answer,
                   images=(uri,), tags=tags)
        )
    return iter(out)


# ---- sample writer ------------------------------------------------------------------------------------------------
# Sample SLAKE: `test.json` (English and Chinese rows, as distributed) and `imgs.zip` (imgs/xmlabN/source.jpg
# plus a mask.png, as in the real archive). English: 3 closed yes/no (capitalised answers), 1 closed non-yes/no,
# 2 open; 2 Chinese rows that the loader must drop.


# (img_id, question, answer, q_lang, answer_type, modality, location, content_type, qid)
ROWS = [
    (1, "Is the lung healthy?", "Yes", "en", "CLOSED", "X-Ray", "Lung", "Abnormality", 11),
    (1, "Does the picture contain a pleural effusion?", "No", "en", "CLOSED", "X-Ray", "Chest", "Abnormality", 12),
    (2, "Is this a CT image?", "Yes", "en", "CLOSED", "CT", "Abdomen", "Modality", 21),
    (2, "Which is bigger in this image, kidney or spleen?", "Kidney", "en", "CLOSED", "CT", "Abdomen", "Size", 22),
    (3, "In what plane is this image scanned?", "Transverse Plane", "en", "OPEN", "MRI", "Brain", "Plane", 31),
    (3, "What organ is shown?", "Brain", "en", "OPEN", "MRI", "Brain", "Organ", 32),
    (1, "肺部健康吗?", "是", "zh", "CLOSED", "X-Ray", "Lung", "Abnormality", 13),
    (2, "这是什么扫描?", "CT", "zh", "OPEN", "CT", "Abdomen", "Modality", 23),
]


def write_slake(root: Path) -> int:
    records = [
        {"img_id": img, "img_name": f"xmlab{img}/source.jpg", "question": q, "answer": a, "q_lang": lang,
         "location": loc, "modality": mod, "answer_type": at, "base_type": "vqa", "content_type": ct,
         "triple": ["vhead", "_", "_"], "qid": qid}
        for img, q, a, lang, at, mod, loc, ct, qid in ROWS
    ]
    (root / "test.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    members = {}
    for img in sorted({r[0] for r in ROWS}):
        members[f"imgs/xmlab{img}/source.jpg"] = sample_files.image_bytes(img, "JPEG")
        members[f"imgs/xmlab{img}/mask.png"] = sample_files.image_bytes(100 + img, "PNG")
        # detection.json: [{name: [x, y, w, h]}] — the bright square image_bytes draws (PIL includes both ends)
        x, y = (img * 7) % 16, (img * 11) % 16
        loc = next(r[6] for r in ROWS if r[0] == img)
        members[f"imgs/xmlab{img}/detection.json"] = json.dumps([{loc: [x, y, 11, 11]}]).encode()
    sample_files.write_zip(root / "imgs.zip", members)
    return sum(r[3] == "en" for r in ROWS)


register_benchmark(NAME, load_slake, sample_writers={"slake": write_slake},
                   efficiency_quota=100, efficiency_kind="yesno", rank=1,
                   table2_subset="closed")  # MedLVR reads SLAKE as its closed yes/no questions

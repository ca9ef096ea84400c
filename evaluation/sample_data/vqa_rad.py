"""Sample VQA-RAD in both releases.

* `vqa_rad/`: the HF parquet release (`data/{train,test}-00000-of-00001-<hash>.parquet`, columns image (HF Image
  struct), question, answer). Test: 3 yes/no in mixed case, 3 open; two questions share an image.
* `vqa_rad_osf/`: the OSF release (`VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`), with train and
  test rows (phrase_type), a CLOSED item whose answer is not yes/no, and an integer answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from medlvr.evaluation.sample_data import image_bytes, write_hf_parquet

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
    images = {img: image_bytes(img, "JPEG") for img, _, _ in rows}
    return {"image": [{"bytes": images[i], "path": f"synpic{i}.jpg"} for i, _, _ in rows],
            "question": [q for _, q, _ in rows], "answer": [a for _, _, a in rows]}


def write_hf(root: Path) -> int:
    write_hf_parquet(root / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet", _hf_columns(HF_TEST), ("image",))
    write_hf_parquet(root / "data" / "train-00000-of-00001-eb8844602202be60.parquet", _hf_columns(HF_TRAIN),
                     ("image",))
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
        (folder / name).write_bytes(image_bytes(int(name[6:9]), "JPEG"))
    return sum(r[7].startswith("test") for r in OSF)


WRITERS = {"vqa_rad": write_hf, "vqa_rad_osf": write_osf}

"""Sample SLAKE: `test.json` (English and Chinese rows, as distributed) and `imgs.zip` (imgs/xmlabN/source.jpg
plus a mask.png, as in the real archive). English: 3 closed yes/no (capitalised answers), 1 closed non-yes/no,
2 open; 2 Chinese rows that the loader must drop."""

from __future__ import annotations

import json
from pathlib import Path

from medlvr.evaluation.sample_data import image_bytes, write_zip

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
        members[f"imgs/xmlab{img}/source.jpg"] = image_bytes(img, "JPEG")
        members[f"imgs/xmlab{img}/mask.png"] = image_bytes(100 + img, "PNG")
        # detection.json: [{name: [x, y, w, h]}] — the bright square image_bytes draws (PIL includes both ends)
        x, y = (img * 7) % 16, (img * 11) % 16
        loc = next(r[6] for r in ROWS if r[0] == img)
        members[f"imgs/xmlab{img}/detection.json"] = json.dumps([{loc: [x, y, 11, 11]}]).encode()
    write_zip(root / "imgs.zip", members)
    return sum(r[3] == "en" for r in ROWS)


WRITERS = {"slake": write_slake}

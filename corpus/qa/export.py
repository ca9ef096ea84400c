"""Render stored QA rows into a model's text at export/collation time (boxes are never stored rendered).

Qwen2.5-VL grounds in absolute pixel coordinates of the image *after* its processor's resize (multiples of 28
within a pixel budget), so a box in the normalised image is scaled by (resized / normalised) per axis.
Grounding answers use the model's native JSON form: [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}].
"""

from __future__ import annotations

import json
import re
from medlvr.corpus.qwen.format import QWEN25_MAX_PIXELS, QWEN25_MIN_PIXELS, model_box

_PLACEHOLDER = re.compile(r"\{box(\d+)\}")


def render_qwen(row: dict, min_pixels: int = QWEN25_MIN_PIXELS, max_pixels: int = QWEN25_MAX_PIXELS) -> tuple[str, str]:
    """(question, answer) text for Qwen2.5-VL from a shard row. Multiple-choice options are appended as
    'A. ...' lines (box options rendered as coordinates) and the answer is the option letter + text.
    `min_pixels`/`max_pixels` must be the budget of the processor that will see the image."""
    hw = (row["height"], row["width"])
    boxes = [list(model_box(b, hw, min_pixels, max_pixels)) for b in (row.get("boxes") or [])]

    def fill(text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: json.dumps(boxes[int(m.group(1))]), text)

    question = fill(row["question"])
    if row.get("answer_is_box"):
        return question, json.dumps([{"bbox_2d": b, "label": row["answer"]} for b in boxes])
    options = row.get("options") or []
    if options:
        letters = "ABCDEFGH"
        question += "\n" + "\n".join(f"{letters[i]}. {fill(o)}" for i, o in enumerate(options))
        idx = row["answer_index"]
        return question, f"{letters[idx]}. {fill(options[idx])}"
    return question, fill(row["answer"])

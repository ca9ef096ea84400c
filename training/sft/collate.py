"""Shard rows -> one ROI-SFT micro-batch.

Layout of row i (prompt left-padded to L by the processor, completion right-padded to T):

    [pad..., <chat prompt with the image and the question>] [<Medlvr_Start>, K x <Medlvr_Latent>, <Medlvr_End>,
     answer tokens..., <|im_end|>, pad...]

so `<Medlvr_Start>` sits at column L in every row and latent k (1-based) at column L + k. Labels (`label_mask`
over the completion): `<Medlvr_Start>`, the answer tokens and the closing `<|im_end|>` (the model must learn to
stop); never the latent slots, never the forced `<Medlvr_End>`. With K = 0 (vanilla SFT) the completion is just
answer + `<|im_end|>`.

Text: `medlvr.corpus.qa.export.render_qwen(row, min_pixels, max_pixels)` with the SAME budget as the processor, so box
coordinates in the text are pixels of the image the model sees.

ROI boxes per row (`roi_boxes`), in the normalised image (the stored PNG), decided in this order:
1. `answer_is_box` (grounding): the answer boxes (all of `boxes`);
2. options that reference boxes (`{boxN}`, grounding_choice): the boxes of the CORRECT option only (the other
   boxes are distractors);
3. otherwise all of the row's `boxes` (the boxes the question refers to, or the counted / located instances);
4. no boxes (presence, modality, organ system, ...): no ROI target (`no_box="none"`, default: such rows train
   only L_ans, and the ROI normaliser counts only rows with a target) or the full-image target
   (`no_box="full_image"`).
`roi_target="full_image"` gives every row the full-image target (the "w/o ROI-SFT" ablation); "off" none.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from medlvr.corpus.qa.export import render_qwen
from medlvr.training.model import LatentTokenIds, set_pixel_budget

_PLACEHOLDER = re.compile(r"\{box(\d+)\}")
FULL_IMAGE = "full_image"  # sentinel in SFTBatch.roi_boxes: full-image target


def roi_boxes(row: dict, roi_target: str = "box", no_box: str = "none"):
    """List of xyxy boxes, FULL_IMAGE, or None (no ROI loss for this row); rules in the module docstring."""
    if roi_target == "off":
        return None
    if roi_target == "full_image":
        return FULL_IMAGE
    boxes = [list(b) for b in (row.get("boxes") or [])]
    if boxes and not row.get("answer_is_box"):
        options = row.get("options") or []
        if any(_PLACEHOLDER.search(o) for o in options) and row.get("answer_index") is not None:
            refs = [int(m) for m in _PLACEHOLDER.findall(options[row["answer_index"]])]
            boxes = [boxes[i] for i in refs]
    if boxes:
        return boxes
    return FULL_IMAGE if no_box == "full_image" else None


@dataclass
class SFTBatch:
    """N rows. prompts: processor output (input_ids / attention_mask / mm_token_type_ids (N, L), pixel_values,
    image_grid_thw); sequences, gen_mask, label_mask: (N, T); roi_boxes: per row a box list, FULL_IMAGE or None;
    image_sizes: (height, width) of each image; n_label / n_roi: this micro-batch's normaliser counts."""

    prompts: dict
    sequences: torch.Tensor
    gen_mask: torch.Tensor
    label_mask: torch.Tensor
    roi_boxes: list
    image_sizes: list[tuple[int, int]]
    k: int

    @property
    def n_label(self) -> int:
        return int(self.label_mask.sum())

    @property
    def roi_mask(self) -> torch.Tensor:
        return torch.tensor([b is not None for b in self.roi_boxes]) if self.k > 0 else torch.zeros(
            len(self.roi_boxes), dtype=torch.bool)

    @property
    def n_roi(self) -> int:
        return int(self.roi_mask.sum())

    @property
    def n_tokens(self) -> int:
        return int(self.prompts["attention_mask"].sum() + self.gen_mask.sum())


def collate(rows: Sequence[dict], processor, ids: LatentTokenIds, k: int, *, min_pixels: int, max_pixels: int,
            roi_target: str = "box", no_box: str = "none", max_answer_tokens: int = 256) -> SFTBatch:
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id
    texts, images, completions, labels, sizes, boxes = [], [], [], [], [], []
    for row in rows:
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        if image.size != (row["width"], row["height"]):
            raise ValueError(f"{row['qa_id']}: PNG is {image.size}, row says {(row['width'], row['height'])}")
        question, answer = render_qwen(row, min_pixels, max_pixels)
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        texts.append(processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        images.append(image)
        ans = tok(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens] + [eos]
        head = [ids.start] + [ids.latent] * k + [ids.end] if k > 0 else []
        completions.append(head + ans)
        labels.append(([True] + [False] * (k + 1) if k > 0 else []) + [True] * len(ans))
        sizes.append((row["height"], row["width"]))
        boxes.append(roi_boxes(row, roi_target, no_box) if k > 0 else None)
    set_pixel_budget(processor, min_pixels, max_pixels)
    prompts = dict(processor(text=texts, images=images, padding=True, return_tensors="pt"))
    T = max(len(c) for c in completions)
    seq = torch.full((len(rows), T), pad, dtype=torch.long)
    gen = torch.zeros(len(rows), T, dtype=torch.bool)
    lab = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (c, lm) in enumerate(zip(completions, labels)):
        seq[i, :len(c)] = torch.tensor(c)
        gen[i, :len(c)] = True
        lab[i, :len(c)] = torch.tensor(lm)
    return SFTBatch(prompts=prompts, sequences=seq, gen_mask=gen, label_mask=lab, roi_boxes=boxes,
                    image_sizes=sizes, k=k)

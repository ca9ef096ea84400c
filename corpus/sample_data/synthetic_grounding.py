"""Synthetic grounding task for the mechanism experiment (docs/mechanism.md): the answer lives in one small region.

NOT a catalog dataset (the corpus catalog does not grow): `write_grounding_task(out_dir, ...)` writes
the task directly in the formats the trainers read.

Image (`size` x `size`, default 112 = a 4 x 4 grid of 28-pixel cells = exactly the 4 x 4 merged visual tokens the
tiny model sees at the 12544-pixel budget): a noisy grey background and `n_structures` square structures in
distinct random cells, each filled with a DIFFERENT pattern of `PATTERNS` (bright, dark, striped, checkered) inside
a frame. Exactly one structure, the lesion, has a RED frame; the others have grey frames. Question: which pattern
does the red-marked lesion show? With 4 structures every pattern is present in every image, so global image
statistics say nothing about the answer: it depends only on the lesion's cell (its box is known).

Written (deterministic in `seed`; train and held-out splits come from independent streams):

    <out>/shards/{train,test}/part-*.parquet     corpus-shard rows (corpus.shards.QA_SCHEMA) with the lesion box:
                                                  what ROI-SFT reads (training.sft.data). The question text embeds
                                                  the options and the instruction, the answer is the letter, so
                                                  SFT, RL and evaluation see exactly the same prompt.
    <out>/images/{train,test}/<id>.png            the images
    <out>/prompts_{train,test}.jsonl              {id, image, question, options, answer, box}: what VLPO reads
                                                  through its own sample source (data.source=synthetic_grounding,
                                                  data.root=<out>) and the `synthetic_grounding` benchmark
                                                  evaluates (`medlvr.corpus.evalsets.synthetic_grounding`:
                                                  `load_grounding_task(out, split)` -> Samples)
    <out>/heldout.jsonl                           the held-out split with boxes (evaluation)
    <out>/task.json                               parameters + counts
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from medlvr.corpus.prompts import MC_INSTRUCTION, mc_prompt_text
from medlvr.corpus.shards import QA_SCHEMA

PATTERNS = ("bright", "dark", "striped", "checkered")
LETTERS = "ABCD"
QUESTION = "Which pattern does the lesion with the red frame show?"
INSTRUCTION = MC_INSTRUCTION
DATASET = "synthetic_grounding"


def prompt_text(question: str, options: list[str], instruction: str = INSTRUCTION) -> str:
    """Same text as `medlvr.training.vlpo.data.prompt_text` (question, 'A. text' lines, instruction)."""
    return mc_prompt_text(question, list(zip(LETTERS, options)), instruction)


def _fill(pattern: str, n: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    if pattern == "bright":
        a = np.full((n, n), 225.0)
    elif pattern == "dark":
        a = np.full((n, n), 25.0)
    elif pattern == "striped":
        a = np.where((yy // 3) % 2 == 0, 225.0, 25.0)
    elif pattern == "checkered":
        a = np.where(((yy // 3) + (xx // 3)) % 2 == 0, 225.0, 25.0)
    else:
        raise ValueError(pattern)
    return a + rng.normal(0, 8, a.shape)


def render(rng: np.random.Generator, size: int = 112, cell: int = 28, n_structures: int = 4, frame: int = 3,
           lesion_cells: int = 1):
    """(RGB uint8 image, lesion box xyxy, lesion pattern index, distractor boxes).

    lesion_cells: 1 (one cell, the original task), 2 (a 1 x 2 block) or 4 (a 2 x 2 block): the lesion then spans
    several merged visual tokens, so the K ROI-bucket targets of its box differ from each other."""
    g = size // cell
    img = np.clip(rng.normal(110, 12, (size, size)), 0, 255)
    rgb = np.stack([img, img, img], -1)
    if lesion_cells == 1:
        cells = rng.choice(g * g, size=n_structures, replace=False)
        blocks = [(int(c // g), int(c % g), 1, 1) for c in cells]
    elif lesion_cells in (2, 4):
        bh, bw = (1, 2) if lesion_cells == 2 else (2, 2)
        r0, c0 = int(rng.integers(0, g - bh + 1)), int(rng.integers(0, g - bw + 1))
        taken = {(r0 + i) * g + c0 + j for i in range(bh) for j in range(bw)}
        free = [c for c in range(g * g) if c not in taken]
        others = rng.choice(free, size=n_structures - 1, replace=False)
        blocks = [(r0, c0, bh, bw)] + [(int(c // g), int(c % g), 1, 1) for c in others]
    else:
        raise ValueError(f"lesion_cells must be 1, 2 or 4, got {lesion_cells}")
    pats = rng.permutation(len(PATTERNS))[:n_structures]
    box, others_boxes = None, []
    for j, ((r, c, bh, bw), p) in enumerate(zip(blocks, pats)):
        y0, x0, h, w = r * cell, c * cell, bh * cell, bw * cell
        color = (230, 30, 30) if j == 0 else (150, 150, 150)
        rgb[y0:y0 + h, x0:x0 + w] = color
        f = _fill(PATTERNS[p], max(h, w) - 2 * frame, rng)[:h - 2 * frame, :w - 2 * frame]
        rgb[y0 + frame:y0 + h - frame, x0 + frame:x0 + w - frame] = f[..., None]
        b = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
        if j == 0:
            box = b
        else:
            others_boxes.append(b)
    return np.clip(rgb, 0, 255).astype(np.uint8), box, int(pats[0]), others_boxes


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def make_items(n: int, seed: int, split: str, **render_kw) -> list[dict]:
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    items = []
    for i in range(n):
        img, box, p, others = render(rng, **render_kw)
        items.append(dict(id=f"sg-{seed}-{split}-{i:05d}", split=split, image=img, box=box, answer_index=p,
                          answer=LETTERS[p], options=list(PATTERNS), question=QUESTION, distractor_boxes=others))
    return items


def shard_row(it: dict) -> dict:
    h, w = it["image"].shape[:2]
    return dict(qa_id=it["id"], image_id=it["id"], dataset=DATASET, modality="synthetic", split=it["split"],
                question_type="grounding_pattern", question=prompt_text(it["question"], it["options"]),
                answer=it["answer"], options=None, answer_index=None, boxes=[it["box"]], answer_is_box=False,
                concept_ids=[], knowledge_only=False, caption=None, text_source="template", patient_key=it["id"],
                dup_group=it["id"], width=w, height=h, image=_png(it["image"]))


def write_grounding_task(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0,
                         size: int = 112, n_structures: int = 4, lesion_cells: int = 1) -> dict:
    """Write every format (module docstring); returns the task summary (also `<out>/task.json`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        items = make_items(n, seed, split, size=size, n_structures=n_structures, lesion_cells=lesion_cells)
        d = out / "shards" / split
        d.mkdir(parents=True, exist_ok=True)
        rows = [shard_row(it) for it in items]
        # several row groups: the SFT stream shuffles blocks and rows inside them
        pq.write_table(pa.Table.from_pylist(rows, schema=QA_SCHEMA), d / "part-00000.parquet", row_group_size=256)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        recs = []
        for it, row in zip(items, rows):
            rel = f"images/{split}/{it['id']}.png"
            (out / rel).write_bytes(row["image"])
            recs.append(dict(id=it["id"], image=rel, question=it["question"], options=it["options"],
                             answer=it["answer"], box=it["box"]))
        (out / f"prompts_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        if split == "test":
            with open(out / "heldout.jsonl", "w") as f:
                for it, rec in zip(items, recs):
                    f.write(json.dumps(dict(id=it["id"], image=str((out / rec["image"]).resolve()),
                                            question=it["question"], options=it["options"], answer=it["answer"],
                                            box=it["box"], distractor_boxes=it["distractor_boxes"],
                                            width=size, height=size)) + "\n")
        counts[split] = n
        counts[f"{split}_answer_hist"] = np.bincount([it["answer_index"] for it in items],
                                                     minlength=len(PATTERNS)).tolist()
    summary = dict(seed=seed, size=size, n_structures=n_structures, lesion_cells=lesion_cells, patterns=list(PATTERNS), question=QUESTION,
                   instruction=INSTRUCTION, counts=counts)
    (out / "task.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the synthetic grounding task")
    ap.add_argument("out")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(write_grounding_task(a.out, a.n_train, a.n_test, a.seed), indent=1))

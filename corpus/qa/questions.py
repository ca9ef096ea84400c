"""Question–answer–box pairs built deterministically from one image's ROIs and the knowledge graph.

Facts come from the record (labels, boxes, spacing) and the graph; wording may later be paraphrased by a VLM
with the answer locked. Boxes are absolute xyxy floats in the normalised image. Questions refer to boxes with
placeholders `{box0}`, `{box1}`, ... that are rendered in the target model's syntax at export time
(corpus.qa.export), never stored rendered.

Question types (stable names): grounding, grounding_choice, region_identification, presence, counting,
position, laterality, size, organ_system, organ_location, modality, region_description.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

QUESTION_TYPES = ("grounding", "grounding_choice", "region_identification", "presence", "counting", "position",
                  "laterality", "size", "organ_system", "organ_location", "modality", "region_description")
MODALITY_NAMES = {"CT": "CT", "MRI": "MRI", "X-ray": "X-ray", "ultrasound": "ultrasound",
                  "dermoscopy": "dermoscopy", "fundus": "fundus photography", "OCT": "OCT",
                  "microscopy": "microscopy"}
# Radiological display puts the patient's right on the image's left (datasets.md §6.4).
RADIOLOGICAL = ("CT", "MRI", "X-ray")
GRID = (("upper left", "upper", "upper right"), ("left", "center", "right"), ("lower left", "lower", "lower right"))


class Concepts(Protocol):
    """The part of the knowledge graph the question builder needs."""

    def name(self, cid: str) -> str: ...
    def kind(self, cid: str) -> str: ...
    def distractors(self, cid: str) -> list[str]: ...  # siblings, same location, differentials (in that order)
    def system_of(self, cid: str) -> str | None: ...
    def organ_of(self, cid: str) -> str | None: ...
    def systems(self) -> list[str]: ...
    def organs(self) -> list[str]: ...
    def related(self, cid: str) -> set[str]: ...  # ancestors and descendants: never distractors for each other


@dataclass(frozen=True)
class RoiFact:
    label: str
    concept: str
    box: tuple[float, float, float, float]
    instance: int
    area_mm2: float | None = None


@dataclass(frozen=True)
class ImageFacts:
    image_id: str
    dataset: str
    modality: str
    width: int
    height: int
    rois: tuple[RoiFact, ...]
    mm_per_px: tuple[float, float] | None = None  # in the normalised image (row, col)
    dataset_concepts: tuple[str, ...] = ()  # what the dataset annotates exhaustively: absent here means absent


@dataclass
class QAPair:
    image_id: str
    question_type: str
    question: str
    answer: str
    boxes: list[list[float]] = field(default_factory=list)  # referenced by {boxN}; for grounding: the answer
    options: list[str] = field(default_factory=list)
    answer_index: int | None = None
    concept_ids: list[str] = field(default_factory=list)
    knowledge_only: bool = False  # answerable from the graph alone (SLAKE's "KG" questions)
    answer_is_box: bool = False
    caption: str | None = None
    paraphrased: str | None = None  # verified VLM rewording of `question` (the answer is unchanged)

    @property
    def qa_id(self) -> str:
        key = f"{self.image_id}|{self.question_type}|{self.question}|{self.answer}|{self.boxes}"
        return hashlib.sha1(key.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class QAConfig:
    max_pairs_per_image: int = 12
    max_concepts_per_image: int = 4
    max_instances_for_grounding: int = 5  # more instances (nuclei, cells) -> counting, not per-instance grounding
    modality_question_rate: float = 0.25
    negative_share: float = 0.3
    seed: int = 0


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _rng(cfg: QAConfig, image_id: str, salt: str) -> np.random.Generator:
    h = int(hashlib.sha1(f"{cfg.seed}|{image_id}|{salt}".encode()).hexdigest()[:16], 16)
    return np.random.default_rng(h)


def _mcq(rng, answer: str, pool: Sequence[str], n: int = 4) -> tuple[list[str], int] | None:
    """Four options: the answer plus the first distinct distractors from `pool` (already ordered by preference)."""
    seen, picks = {answer.lower()}, []
    for p in pool:
        if p.lower() not in seen:
            seen.add(p.lower())
            picks.append(p)
        if len(picks) == n - 1:
            break
    if len(picks) < n - 1:
        return None
    opts = [answer] + picks
    order = rng.permutation(n)
    opts = [opts[i] for i in order]
    return opts, int(np.flatnonzero(order == 0)[0])


def position_word(box: Sequence[float], w: int, h: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
    return GRID[min(2, int(cy * 3))][min(2, int(cx * 3))]


def distractor_boxes(rng, true: Sequence[float], others: Sequence[Sequence[float]], w: int, h: int,
                     n: int = 3, max_iou: float = 0.3) -> list[list[float]] | None:
    """Wrong-box options: other ROIs of the image first, then same-size boxes elsewhere; IoU < max_iou with
    the true box and with each other."""
    chosen: list[list[float]] = []

    def ok(b):
        return iou(b, true) < max_iou and all(iou(b, c) < max_iou for c in chosen)

    for b in others:
        if len(chosen) < n and ok(b):
            chosen.append([float(v) for v in b])
    bw, bh = true[2] - true[0], true[3] - true[1]
    for _ in range(200):
        if len(chosen) >= n or bw >= w or bh >= h:
            break
        x0 = float(rng.uniform(0, w - bw))
        y0 = float(rng.uniform(0, h - bh))
        b = [round(x0, 1), round(y0, 1), round(x0 + bw, 1), round(y0 + bh, 1)]
        if ok(b):
            chosen.append(b)
    return chosen if len(chosen) == n else None


def build_pairs(img: ImageFacts, kg: Concepts, cfg: QAConfig = QAConfig()) -> list[QAPair]:
    """All question types that the record supports, capped per image, deterministic in (seed, image_id)."""
    rng = _rng(cfg, img.image_id, "qa")
    mod = MODALITY_NAMES.get(img.modality, img.modality)
    by_concept: dict[str, list[RoiFact]] = {}
    for r in img.rois:
        by_concept.setdefault(r.concept, []).append(r)
    present = set(by_concept)
    blocked = set(present)
    for c in present:
        blocked |= kg.related(c)
    concepts = sorted(present)
    if len(concepts) > cfg.max_concepts_per_image:
        concepts = sorted(rng.choice(concepts, cfg.max_concepts_per_image, replace=False).tolist())
    pos: list[QAPair] = []
    neg: list[QAPair] = []
    for c in concepts:
        rois = by_concept[c]
        name = kg.name(c)
        boxes = [list(r.box) for r in rois]
        largest = max(rois, key=lambda r: (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))
        lb = list(largest.box)
        pool = [d for d in kg.distractors(c) if d not in blocked]
        if len(rois) <= cfg.max_instances_for_grounding:
            pos.append(QAPair(img.image_id, "grounding", f"Where is the {name} in this {mod} image?", name,
                              boxes=boxes, concept_ids=[c], answer_is_box=True))
            others = [list(r.box) for r in img.rois if r.concept != c]
            wrong = distractor_boxes(_rng(cfg, img.image_id, f"box|{c}"), lb, others, img.width, img.height)
            if wrong is not None and len(rois) == 1:
                opts = [lb] + wrong
                order = rng.permutation(4)
                obox = [opts[i] for i in order]
                letters = [f"{{box{i}}}" for i in range(4)]
                pos.append(QAPair(img.image_id, "grounding_choice", f"Which region contains the {name}?",
                                  letters[int(np.flatnonzero(order == 0)[0])], boxes=obox, options=letters,
                                  answer_index=int(np.flatnonzero(order == 0)[0]), concept_ids=[c]))
        m = _mcq(rng, name, [kg.name(d) for d in pool])
        if m:
            pos.append(QAPair(img.image_id, "region_identification", "What is shown in the region {box0}?", name,
                              boxes=[lb], options=m[0], answer_index=m[1], concept_ids=[c]))
        pos.append(QAPair(img.image_id, "presence", f"Is there a {name} in this image?", "yes", concept_ids=[c]))
        if pool:
            d = pool[int(rng.integers(0, min(3, len(pool))))]
            neg.append(QAPair(img.image_id, "presence", f"Is there a {kg.name(d)} in this image?", "no",
                              concept_ids=[d]))
        n = len(rois)
        count = str(n) if n <= 10 else ("11 to 20" if n <= 20 else ("21 to 50" if n <= 50 else "more than 50"))
        plural = name if name.endswith("s") else f"{name}s"
        if kg.kind(c) in ("finding", "cell") or n > 1:
            pos.append(QAPair(img.image_id, "counting", f"How many {plural} are visible in this image?", count,
                              boxes=boxes if n <= cfg.max_instances_for_grounding else [], concept_ids=[c]))
        if n == 1:
            pos.append(QAPair(img.image_id, "position", f"In which part of the image is the {name}?",
                              position_word(lb, img.width, img.height), boxes=[lb], concept_ids=[c]))
            if img.modality in RADIOLOGICAL:
                cx = (lb[0] + lb[2]) / 2 / img.width
                if abs(cx - 0.5) > 0.08:  # centred structures have no side
                    side = "right" if cx < 0.5 else "left"
                    pos.append(QAPair(img.image_id, "laterality",
                                      f"On which side of the patient is the {name}?", side, boxes=[lb], concept_ids=[c]))
            if img.mm_per_px:
                long_mm = max((lb[2] - lb[0]) * img.mm_per_px[1], (lb[3] - lb[1]) * img.mm_per_px[0])
                true = max(1, int(round(long_mm)))
                alts = sorted({max(1, int(round(true * f))) for f in (0.4, 2.0, 3.0, 0.25, 4.0)} - {true})
                m = _mcq(rng, f"about {true} mm", [f"about {a} mm" for a in alts])
                if m:
                    pos.append(QAPair(img.image_id, "size", f"What is the longest diameter of the {name} in {{box0}}?",
                                      f"about {true} mm", boxes=[lb], options=m[0], answer_index=m[1], concept_ids=[c]))
        organ = kg.organ_of(c) if kg.kind(c) == "finding" else None
        if organ:
            m = _mcq(rng, kg.name(organ), [kg.name(o) for o in kg.organs() if o != organ and o not in blocked])
            if m:
                pos.append(QAPair(img.image_id, "organ_location", f"Which organ is the {name} in {{box0}} located in?",
                                  kg.name(organ), boxes=[lb], options=m[0], answer_index=m[1],
                                  concept_ids=[c, organ], knowledge_only=True))
        system = kg.system_of(organ or c)
        if system:
            target = kg.name(organ) if organ else name
            m = _mcq(rng, kg.name(system), [kg.name(s) for s in kg.systems() if s != system])
            if m:
                pos.append(QAPair(img.image_id, "organ_system", f"Which organ system does the {target} belong to?",
                                  kg.name(system), options=m[0], answer_index=m[1],
                                  concept_ids=[c, system], knowledge_only=True))
    if not img.rois:  # a negative image (normal study, negative slice): absence of what the dataset annotates
        findings = [c for c in img.dataset_concepts if kg.kind(c) == "finding"]
        for c in findings[:2]:
            neg.append(QAPair(img.image_id, "presence", f"Is there a {kg.name(c)} in this image?", "no",
                              concept_ids=[c]))
    if rng.random() < cfg.modality_question_rate:
        m = _mcq(rng, mod, [v for k, v in MODALITY_NAMES.items() if k != img.modality][::-1])
        if m:
            pos.append(QAPair(img.image_id, "modality", "Which imaging modality was used to acquire this image?",
                              mod, options=m[0], answer_index=m[1]))
    return _cap(rng, _unique(pos), _unique([p for p in neg if p.qa_id not in {q.qa_id for q in pos}]), cfg)


def _unique(pairs: list[QAPair]) -> list[QAPair]:
    """The same question can arise twice (two present concepts sharing a distractor): keep the first."""
    seen: set[str] = set()
    out = []
    for p in pairs:
        if p.qa_id not in seen:
            seen.add(p.qa_id)
            out.append(p)
    return out


def _cap(rng, pos: list[QAPair], neg: list[QAPair], cfg: QAConfig) -> list[QAPair]:
    """At most max_pairs_per_image, with about negative_share adversarial negatives, types interleaved."""
    n_neg = min(len(neg), int(round(cfg.max_pairs_per_image * cfg.negative_share)))
    n_pos = min(len(pos), cfg.max_pairs_per_image - n_neg)
    n_neg = min(len(neg), cfg.max_pairs_per_image - n_pos)
    keep_pos = sorted(rng.choice(len(pos), n_pos, replace=False).tolist()) if n_pos < len(pos) else range(len(pos))
    keep_neg = sorted(rng.choice(len(neg), n_neg, replace=False).tolist()) if n_neg < len(neg) else range(len(neg))
    return [pos[i] for i in keep_pos] + [neg[i] for i in keep_neg]

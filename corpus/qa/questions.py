"""Question–answer–box pairs built deterministically from one image's ROIs and the knowledge graph.

Facts come from the record (labels, boxes, spacing) and the graph; wording may later be paraphrased by a VLM
with the answer locked. Boxes are absolute xyxy floats in the normalised image. Questions refer to boxes with
placeholders `{box0}`, `{box1}`, ... that are rendered in the target model's syntax at export time
(corpus.qa.export), never stored rendered.

Question types are registered (`register_question_type`): each is one builder function below that returns the
pairs of its type for one concept (or one image); `build_pairs` is a loop over the registry. Stable names:
grounding, grounding_choice, region_identification, presence, counting, position, laterality, size,
organ_location, organ_system, modality, and region_description (written by the VLM text stage, corpus.qa.text).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import numpy as np

MODALITY_NAMES = {"CT": "CT", "MRI": "MRI", "X-ray": "X-ray", "ultrasound": "ultrasound",
                  "dermoscopy": "dermoscopy", "fundus": "fundus photography", "OCT": "OCT",
                  "microscopy": "microscopy"}
# Radiological display puts the patient's right on the image's left (docs/datasets.md §6.4).
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


# ---- the question-type registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageScope:
    """What a per-image builder sees. `rng` is the image's one stream: builders draw from it in registry order,
    so the order of registration is part of the output (and of the tests that pin it)."""

    img: ImageFacts
    kg: Concepts
    cfg: QAConfig
    rng: np.random.Generator
    modality_name: str  # MODALITY_NAMES wording of img.modality
    blocked: frozenset[str]  # present concepts and everything related to them: never distractors


@dataclass(frozen=True)
class ConceptScope(ImageScope):
    """What a per-concept builder sees: one present concept (the image's ROIs of it) on top of the image scope."""

    concept: str = ""
    name: str = ""  # the concept's display name
    rois: tuple[RoiFact, ...] = ()
    largest: list[float] = field(default_factory=list)  # box of the concept's largest ROI
    pool: tuple[str, ...] = ()  # distractor concepts (graph order), none of them blocked

    @property
    def boxes(self) -> list[list[float]]:
        return [list(r.box) for r in self.rois]

    def pair(self, question_type: str, question: str, answer: str, **kw) -> QAPair:
        return QAPair(self.img.image_id, question_type, question, answer, **kw)


@dataclass
class Built:
    """A builder's output: questions about what is there, and adversarial negatives (capped separately)."""

    pos: list[QAPair] = field(default_factory=list)
    neg: list[QAPair] = field(default_factory=list)


@dataclass(frozen=True)
class QuestionType:
    """One registered question type. `per_concept(scope) -> Built` runs for every chosen concept of an image,
    `per_image(scope) -> Built` once per image (after the concepts); either may be None. A type with neither
    (`region_description`) is written by a later stage (corpus.qa.text) and is registered for its name only.

    Export (corpus.qa.export.render_qwen) and ROI-SFT collation (training.sft.collate.roi_boxes) never look at
    the type's name: they read the pair's fields (`answer_is_box`: the answer is the boxes; `options` holding
    `{boxN}`: the correct option's boxes are the ROI; otherwise all `boxes`). A new type sets those fields."""

    name: str
    description: str
    per_concept: Callable[[ConceptScope], Built] | None = None
    per_image: Callable[[ImageScope], Built] | None = None


QUESTION_TYPE_REGISTRY: dict[str, QuestionType] = {}


def register_question_type(name: str, description: str, *, per: str = "concept"):
    """Decorator: register `fn` as the per-concept (`per="concept"`) or per-image (`per="image"`) builder of the
    question type `name`. A type may have one builder of each kind (presence: per concept, and per negative
    image). Builders run in registration order (module order below)."""
    if per not in ("concept", "image"):
        raise ValueError(f"per must be 'concept' or 'image', got {per!r}")
    key = "per_concept" if per == "concept" else "per_image"

    def deco(fn):
        current = QUESTION_TYPE_REGISTRY.get(name, QuestionType(name, description))
        if getattr(current, key) is not None:
            raise ValueError(f"question type {name!r} already has a {per} builder")
        QUESTION_TYPE_REGISTRY[name] = replace(current, **{key: fn})
        return fn

    return deco


def register_generated_type(name: str, description: str) -> str:
    """Register a type whose pairs a later stage writes (no builder here); returns the name for that stage."""
    if name in QUESTION_TYPE_REGISTRY:
        raise ValueError(f"question type {name!r} registered twice")
    QUESTION_TYPE_REGISTRY[name] = QuestionType(name, description)
    return name


def build_pairs(img: ImageFacts, kg: Concepts, cfg: QAConfig = QAConfig()) -> list[QAPair]:
    """All registered question types that the record supports, capped per image, deterministic in
    (seed, image_id): each chosen concept through every per-concept builder, then the per-image builders."""
    rng = _rng(cfg, img.image_id, "qa")
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
    scope = ImageScope(img, kg, cfg, rng, MODALITY_NAMES.get(img.modality, img.modality), frozenset(blocked))
    types = list(QUESTION_TYPE_REGISTRY.values())
    pos: list[QAPair] = []
    neg: list[QAPair] = []
    for c in concepts:
        rois = by_concept[c]
        largest = max(rois, key=lambda r: (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))
        cs = ConceptScope(**vars(scope), concept=c, name=kg.name(c), rois=tuple(rois), largest=list(largest.box),
                          pool=tuple(d for d in kg.distractors(c) if d not in blocked))
        for t in types:
            if t.per_concept is not None:
                out = t.per_concept(cs)
                pos += out.pos
                neg += out.neg
    for t in types:
        if t.per_image is not None:
            out = t.per_image(scope)
            pos += out.pos
            neg += out.neg
    return _cap(rng, _unique(pos), _unique([p for p in neg if p.qa_id not in {q.qa_id for q in pos}]), cfg)


# ---- the question types (registration order = build order) --------------------------------------------------


@register_question_type("grounding", "where is the <concept>? The answer is the concept's boxes")
def grounding(s: ConceptScope) -> Built:
    if len(s.rois) > s.cfg.max_instances_for_grounding:  # many instances (nuclei, cells): counting instead
        return Built()
    return Built([s.pair("grounding", f"Where is the {s.name} in this {s.modality_name} image?", s.name,
                         boxes=s.boxes, concept_ids=[s.concept], answer_is_box=True)])


@register_question_type("grounding_choice", "which of four boxes contains the <concept>? (a single instance)")
def grounding_choice(s: ConceptScope) -> Built:
    if len(s.rois) > s.cfg.max_instances_for_grounding:
        return Built()
    img = s.img
    others = [list(r.box) for r in img.rois if r.concept != s.concept]
    wrong = distractor_boxes(_rng(s.cfg, img.image_id, f"box|{s.concept}"), s.largest, others, img.width, img.height)
    if wrong is None or len(s.rois) != 1:
        return Built()
    opts = [s.largest] + wrong
    order = s.rng.permutation(4)
    right = int(np.flatnonzero(order == 0)[0])
    letters = [f"{{box{i}}}" for i in range(4)]
    return Built([s.pair("grounding_choice", f"Which region contains the {s.name}?", letters[right],
                         boxes=[opts[i] for i in order], options=letters, answer_index=right,
                         concept_ids=[s.concept])])


@register_question_type("region_identification", "what is shown in {box0}? Four named options")
def region_identification(s: ConceptScope) -> Built:
    m = _mcq(s.rng, s.name, [s.kg.name(d) for d in s.pool])
    if not m:
        return Built()
    return Built([s.pair("region_identification", "What is shown in the region {box0}?", s.name, boxes=[s.largest],
                         options=m[0], answer_index=m[1], concept_ids=[s.concept])])


@register_question_type("presence", "is there a <concept>? yes for present concepts, no for a distractor")
def presence(s: ConceptScope) -> Built:
    out = Built([s.pair("presence", f"Is there a {s.name} in this image?", "yes", concept_ids=[s.concept])])
    if s.pool:
        d = s.pool[int(s.rng.integers(0, min(3, len(s.pool))))]
        out.neg.append(s.pair("presence", f"Is there a {s.kg.name(d)} in this image?", "no", concept_ids=[d]))
    return out


@register_question_type("presence", "", per="image")
def presence_on_negative_image(s: ImageScope) -> Built:
    """A negative image (normal study, negative slice): absence of what the dataset annotates."""
    if s.img.rois:
        return Built()
    findings = [c for c in s.img.dataset_concepts if s.kg.kind(c) == "finding"]
    return Built(neg=[QAPair(s.img.image_id, "presence", f"Is there a {s.kg.name(c)} in this image?", "no",
                             concept_ids=[c]) for c in findings[:2]])


@register_question_type("counting", "how many <concept>s? Exact up to 10, then ranges")
def counting(s: ConceptScope) -> Built:
    n = len(s.rois)
    if not (s.kg.kind(s.concept) in ("finding", "cell") or n > 1):
        return Built()
    count = str(n) if n <= 10 else ("11 to 20" if n <= 20 else ("21 to 50" if n <= 50 else "more than 50"))
    plural = s.name if s.name.endswith("s") else f"{s.name}s"
    return Built([s.pair("counting", f"How many {plural} are visible in this image?", count,
                         boxes=s.boxes if n <= s.cfg.max_instances_for_grounding else [], concept_ids=[s.concept])])


@register_question_type("position", "in which ninth of the image is the <concept>? (a single instance)")
def position(s: ConceptScope) -> Built:
    if len(s.rois) != 1:
        return Built()
    return Built([s.pair("position", f"In which part of the image is the {s.name}?",
                         position_word(s.largest, s.img.width, s.img.height), boxes=[s.largest],
                         concept_ids=[s.concept])])


@register_question_type("laterality", "on which side of the patient? (radiological images, off-centre)")
def laterality(s: ConceptScope) -> Built:
    if len(s.rois) != 1 or s.img.modality not in RADIOLOGICAL:
        return Built()
    cx = (s.largest[0] + s.largest[2]) / 2 / s.img.width
    if abs(cx - 0.5) <= 0.08:  # centred structures have no side
        return Built()
    side = "right" if cx < 0.5 else "left"
    return Built([s.pair("laterality", f"On which side of the patient is the {s.name}?", side, boxes=[s.largest],
                         concept_ids=[s.concept])])


@register_question_type("size", "longest diameter in mm, four options (images with a pixel spacing)")
def size(s: ConceptScope) -> Built:
    if len(s.rois) != 1 or not s.img.mm_per_px:
        return Built()
    lb, mm = s.largest, s.img.mm_per_px
    long_mm = max((lb[2] - lb[0]) * mm[1], (lb[3] - lb[1]) * mm[0])
    true = max(1, int(round(long_mm)))
    alts = sorted({max(1, int(round(true * f))) for f in (0.4, 2.0, 3.0, 0.25, 4.0)} - {true})
    m = _mcq(s.rng, f"about {true} mm", [f"about {a} mm" for a in alts])
    if not m:
        return Built()
    return Built([s.pair("size", f"What is the longest diameter of the {s.name} in {{box0}}?", f"about {true} mm",
                         boxes=[lb], options=m[0], answer_index=m[1], concept_ids=[s.concept])])


def _organ(s: ConceptScope) -> str | None:
    """The organ a finding lies in (None for anatomy and for findings the graph does not place)."""
    return s.kg.organ_of(s.concept) if s.kg.kind(s.concept) == "finding" else None


@register_question_type("organ_location", "which organ is the finding in {box0} located in? (graph knowledge)")
def organ_location(s: ConceptScope) -> Built:
    organ = _organ(s)
    if not organ:
        return Built()
    m = _mcq(s.rng, s.kg.name(organ), [s.kg.name(o) for o in s.kg.organs() if o != organ and o not in s.blocked])
    if not m:
        return Built()
    return Built([s.pair("organ_location", f"Which organ is the {s.name} in {{box0}} located in?", s.kg.name(organ),
                         boxes=[s.largest], options=m[0], answer_index=m[1], concept_ids=[s.concept, organ],
                         knowledge_only=True)])


@register_question_type("organ_system", "which organ system does the organ belong to? (graph knowledge)")
def organ_system(s: ConceptScope) -> Built:
    organ = _organ(s)
    system = s.kg.system_of(organ or s.concept)
    if not system:
        return Built()
    target = s.kg.name(organ) if organ else s.name
    m = _mcq(s.rng, s.kg.name(system), [s.kg.name(x) for x in s.kg.systems() if x != system])
    if not m:
        return Built()
    return Built([s.pair("organ_system", f"Which organ system does the {target} belong to?", s.kg.name(system),
                         options=m[0], answer_index=m[1], concept_ids=[s.concept, system], knowledge_only=True)])


@register_question_type("modality", "which imaging modality? Asked of a `modality_question_rate` share of images",
                        per="image")
def modality(s: ImageScope) -> Built:
    if not s.rng.random() < s.cfg.modality_question_rate:
        return Built()
    mod = s.modality_name
    m = _mcq(s.rng, mod, [v for k, v in MODALITY_NAMES.items() if k != s.img.modality][::-1])
    if not m:
        return Built()
    return Built([QAPair(s.img.image_id, "modality", "Which imaging modality was used to acquire this image?", mod,
                         options=m[0], answer_index=m[1])])


REGION_DESCRIPTION = register_generated_type(
    "region_description", "describe the region {box0}: a verified VLM caption, written by corpus.qa.text")
QUESTION_TYPES = tuple(QUESTION_TYPE_REGISTRY)


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

"""The VLM text stage of QA building: region descriptions (new pairs) and question paraphrases (answer locked),
every output checked by the verifier; rejections and failures are counted, never silently kept."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from medlvr.corpus.qa.cache import CachedBackend
from medlvr.corpus.qa.generation import make_backend
from medlvr.corpus.qa.questions import REGION_DESCRIPTION, ImageFacts, QAPair, position_word
from medlvr.corpus.qa.requests import GenRequest
from medlvr.corpus.qa.verify import EntityMatcher, Verdict, verify
from medlvr.corpus.qwen.format import QWEN25_MAX_PIXELS, QWEN25_MIN_PIXELS, model_box


def chosen(key: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) draw keyed by a string (stable across runs and processes)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < rate


class TextStage:
    def __init__(self, cfg, kg, out_dir: Path):
        gcfg = cfg.generator
        if gcfg.cache_dir is None:  # the model back ends cache responses next to the corpus by default
            gcfg = dataclasses.replace(gcfg, cache_dir=str(Path(out_dir) / "gen_cache"))
        self.gen_cfg = gcfg
        self.backend = make_backend(self.gen_cfg)
        self.cfg, self.kg = cfg, kg
        self.matcher = EntityMatcher(kg.entity_terms())
        self.stats: Counter = Counter()

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def _caption_request(self, row: dict, facts: ImageFacts):
        roi = max(facts.rois, key=lambda r: (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))
        name = self.kg.name(roi.concept)
        size = None
        if facts.mm_per_px:
            size = round(max((roi.box[2] - roi.box[0]) * facts.mm_per_px[1],
                             (roi.box[3] - roi.box[1]) * facts.mm_per_px[0]), 1)
        kg_facts = self.consistent_facts(roi.concept, facts.modality)[:6]
        pos = position_word(roi.box, facts.width, facts.height)
        prompt = (f"Describe the {name} in the region {{box}} of this {facts.modality} image in one or two sentences. "
                  f"Use only these facts: {'; '.join(kg_facts) or 'none'}. It lies in the {pos} part of the image"
                  + (f", about {size} mm across" if size else "")
                  + f". Name it exactly '{name}' and do not mention any other finding.")
        req = GenRequest("region_caption", prompt, row["png"], roi.box, (name,),
                         {"label": name, "modality": facts.modality, "position": pos, "size_mm": size, "facts": kg_facts})
        return req, roi

    def allowed(self, concepts, modality: str) -> set[str]:
        """Entities generated text may mention: the record's concepts, their ancestors and graph neighbourhood."""
        out = set(concepts) | self.kg.modality_concepts(modality)
        for c in concepts:
            out |= self.kg.allowed_around(c)
        return out

    def consistent_facts(self, concept: str, modality: str) -> list[str]:
        """Retrieved facts that mention no entity outside the allowed set: the VLM is never handed a fact that
        the verifier would reject it for repeating."""
        allowed = self.allowed([concept], modality)
        return [f for f in self.kg.facts(concept) if all(c in allowed for _, c in self.matcher.mentions(f))]

    def _paraphrase_request(self, p: QAPair):
        names = tuple(n for n in (self.kg.name(c) for c in p.concept_ids[:1]) if n in p.question)
        slots = tuple(sorted({f"{{box{i}}}" for i in range(len(p.boxes)) if f"{{box{i}}}" in p.question}))
        locked = names + slots
        keep = ", ".join(repr(s) for s in locked) or "its terms"
        prompt = (f"Rephrase this question without changing its meaning. Keep {keep} verbatim and add no medical "
                  f"term. Question: {p.question}")
        return GenRequest("paraphrase", prompt, None, None, locked,
                          {"question": p.question, "label": names[0] if names else ""})

    def run(self, items: list[tuple[dict, ImageFacts, list[QAPair]]]) -> None:
        """Adds verified text to the pairs of a batch of images, in place."""
        reqs: list[Any] = []
        targets: list[tuple[str, ImageFacts, list[QAPair], Any]] = []
        for row, facts, pairs in items:
            if facts.rois and chosen(f"cap|{facts.image_id}", self.cfg.caption_rate):
                req, roi = self._caption_request(row, facts)
                reqs.append(req)
                targets.append(("caption", facts, pairs, roi))
            for p in pairs:
                if not p.answer_is_box and chosen(f"para|{p.qa_id}", self.cfg.paraphrase_rate):
                    reqs.append(self._paraphrase_request(p))
                    targets.append(("paraphrase", facts, pairs, p))
        if not reqs:
            return
        verdicts: dict[tuple[int, str], Verdict] = {}  # (position, text) -> Verdict: each reply is verified once

        def check(i: int, text: str) -> Verdict:
            if (i, text) not in verdicts:
                verdicts[(i, text)] = self._verify(reqs[i], text, targets[i])
            return verdicts[(i, text)]

        if isinstance(self.backend, CachedBackend):  # the cache stores only replies the verifier accepts
            texts = self.backend.generate(reqs, accept=lambda i, text: check(i, text).ok)
        else:
            texts = self.backend.generate(reqs)
        for i, (text, (kind, facts, pairs, obj)) in enumerate(zip(texts, targets)):
            self.stats[f"{kind}_requested"] += 1
            if text is None:
                self.stats[f"{kind}_failed"] += 1
                continue
            verdict = check(i, text)
            if not verdict.ok:
                self.stats[f"{kind}_rejected"] += 1
                self.stats[f"{kind}_rejected_{verdict.reason}"] += 1
                continue
            self.stats[f"{kind}_accepted"] += 1
            if kind == "caption":
                pairs.append(QAPair(facts.image_id, REGION_DESCRIPTION, "Describe the region {box0}.", text,
                                    boxes=[list(obj.box)], concept_ids=[obj.concept], caption=text))
            else:
                obj.paraphrased = text

    def _verify(self, req: GenRequest, text: str, target: tuple[str, ImageFacts, list[QAPair], Any]) -> Verdict:
        kind, facts, _, obj = target
        concepts = [obj.concept] if kind == "caption" else list(obj.concept_ids)
        allowed = self.allowed(concepts, facts.modality)
        boxes = []
        if req.box is not None:
            boxes = [req.box, model_box(req.box, (facts.height, facts.width), *self._pixels())]
        return verify(text, allowed, self.matcher, req.locked, boxes=boxes)

    def _pixels(self) -> tuple[int, int]:
        return (self.gen_cfg.min_pixels or QWEN25_MIN_PIXELS, self.gen_cfg.max_pixels or QWEN25_MAX_PIXELS)

"""Deterministic, offline generator (the default backend).

Words region captions and question paraphrases from `GenRequest.fields` only, never from the prompt text, so
its output cannot contain anything the structured record did not already hold. The phrasing is picked by a
sha256 of the request (not Python's salted `hash`), so the same record gets the same text in every process and
every rebuild, while different records spread over the phrasings. Every output contains each locked string
verbatim (checked, with a fallback that appends it).
"""

from __future__ import annotations

from medlvr.corpus.qa.requests import GenRequest, stable_hash

# Bump when phrasings change: it is part of model_id, so cached/recorded texts are attributable to a version.
TEMPLATE_VERSION = "1"

# {mod}: modality noun phrase, {label}: locked label, {pos}: " in the upper-left" or "", {size}: ", measuring
# about 12 mm" or "". Labels are never sentence-initial, so their case is never changed.
_CAPTION_HEADS = (
    "The outlined region of this {mod} corresponds to {label}{pos}{size}.",
    "Within the marked box{pos}, the {mod} shows {label}{size}.",
    "The boxed area on this {mod} is labelled {label}{pos}{size}.",
    "In this {mod}, the highlighted region{pos} shows {label}{size}.",
    "The region inside the box{pos} of the {mod} contains {label}{size}.",
)
_FACT_LEADS = ("Note that {fact}.", "Background: {fact}.", "For context, {fact}.", "Relevant knowledge: {fact}.")

# {q}: the original question verbatim; {qd}: the same with a lower-cased first letter when that keeps every
# locked string intact. Retrieved facts are deliberately not woven into paraphrases: they could leak the answer.
_PARAPHRASES = (
    "Based on this {mod}, {qd}",
    "Looking at the {mod}: {q}",
    "{q} Answer using the image.",
    "Please examine the {mod}. {q}",
    "Considering the image, {qd}",
    "Regarding this {mod}, {qd}",
)


def _fmt_size(size_mm) -> str:
    if size_mm is None:
        return ""
    size = float(size_mm)
    # one decimal below 10 mm, where a millimetre is a large relative difference
    return f", measuring about {size:.1f} mm" if size < 10 else f", measuring about {size:.0f} mm"


# Graph relation names (docs/datasets.md §6.6 / §7) as English verb phrases; unknown relations fall back to the name
# with spaces for underscores.
_RELATION_WORDS = {
    "subclass_of": "is a type of",
    "located_in": "is located in",
    "part_of": "is part of",
    "belongs_to_system": "belongs to the",
    "visible_on": "is visible on",
    "appearance_on": "typically appears on",
    "differential_with": "is a differential diagnosis of",
    "component_of": "is a component of",
    "symptom": "can present with",
    "cause": "can be caused by",
    "treatment": "can be treated with",
}


def _fmt_fact(fact) -> str:
    """A fact string as-is; a (subject, relation, object) triple as 'subject <relation words> object'."""
    if isinstance(fact, (list, tuple)) and len(fact) == 3:
        s, r, o = (str(x) for x in fact)
        return f"{s} {_RELATION_WORDS.get(r, r.replace('_', ' '))} {o}"
    return str(fact).strip().rstrip(".")


def _modality_phrase(modality) -> str:
    if not modality:
        return "image"
    m = str(modality).strip()
    # "CT" -> "CT image"; "chest X-ray" stays as is; "fundus photograph" stays as is
    return m if any(w in m.lower() for w in ("image", "scan", "x-ray", "photograph", "slide", "radiograph")) \
        else f"{m} image"


def _ensure_locked(text: str, locked: tuple[str, ...]) -> str:
    """Append any locked string the phrasing lost (should not happen; the invariant matters more than style)."""
    missing = [s for s in locked if s and s not in text]
    if missing:
        text = text + " Key terms: " + "; ".join(missing) + "."
    return text


class TemplateBackend:
    model_id = f"template-v{TEMPLATE_VERSION}"

    def generate(self, reqs: list[GenRequest]) -> list[str | None]:
        return [self.one(r) for r in reqs]

    def one(self, req: GenRequest) -> str:
        # the key covers everything the text depends on, so equal requests give equal texts
        h = int(stable_hash(req.task, req.prompt, req.fields, req.box, req.locked)[:16], 16)
        if req.task == "region_caption":
            text = self._caption(req, h)
        else:
            text = self._paraphrase(req, h)
        return _ensure_locked(text, req.locked)

    def _caption(self, req: GenRequest, h: int) -> str:
        f = req.fields
        label = str(f.get("label") or (req.locked[0] if req.locked else "a finding"))
        pos = f" in the {f['position']}" if f.get("position") else ""
        head = _CAPTION_HEADS[h % len(_CAPTION_HEADS)].format(
            mod=_modality_phrase(f.get("modality")), label=label, pos=pos, size=_fmt_size(f.get("size_mm"))
        )
        facts = [_fmt_fact(x) for x in (f.get("facts") or []) if _fmt_fact(x)]
        parts = [head]
        # at most two facts, rotated by the hash so different records use different graph facts
        for i in range(min(2, len(facts))):
            fact = facts[(h // 7 + i) % len(facts)]
            parts.append(_FACT_LEADS[(h // 31 + i) % len(_FACT_LEADS)].format(fact=fact))
        return " ".join(parts)

    def _paraphrase(self, req: GenRequest, h: int) -> str:
        f = req.fields
        q = str(f.get("question") or req.prompt).strip()
        first_word = q.split(" ", 1)[0]
        # keep acronyms ("CT", "MRI") and locked strings that start the question exactly as written
        qd = q if sum(c.isupper() for c in first_word) > 1 else q[:1].lower() + q[1:]
        if any(s and s in q and s not in qd for s in req.locked):
            qd = q
        template = _PARAPHRASES[h % len(_PARAPHRASES)]
        return template.format(mod=_modality_phrase(f.get("modality")), q=q, qd=qd)

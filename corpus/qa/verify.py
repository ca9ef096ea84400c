"""Verifier for generated text (a MedVLSynther-style check, docs/datasets.md §6.5).

A generated caption/paraphrase is accepted only if
1. it is not empty,
2. every locked string (label, answer slot) appears verbatim up to letter case (a model may capitalise a label
   that starts a sentence; it may not reword it),
3. every box-like coordinate group in it equals one of the allowed boxes (within `box_tol`, written x1 y1 x2 y2
   or x1 x2 y1 y2, or x y width height when written with w/h/width/height words); with no allowed box, any
   coordinate group is an invented box and is rejected. "Box-like" means however written (`find_boxes`), after
   NFKC normalisation (full-width digits and brackets are ASCII) and with numbers in any notation (signs,
   decimals, exponents "1e1"): four numbers in one bracket pair, two bracketed pairs, or four numbers chained by
   nothing but spaces, punctuation, symbols and coordinate words ("box: 12 30 40 50", "x1=12 y1=30 ...",
   "x=12,y=30 w=28,h=20", "x from 12 to 40 and y from 30 to 50", "12-40 x 30-50", "top-left (12, 30),
   bottom-right (40, 50)"). A chain followed by a unit or a counted noun ("4 x 5 x 6 x 7 mm", "3, 4, 5 and 6
   ribs") is a size or a count, not coordinates,
4. every medical entity it mentions maps to a concept in `allowed` (the record's label, its ancestors and its
   graph neighbours, chosen by the caller).

Entity mentions are found with `entity_terms` (surface term -> concept id, e.g. `KnowledgeGraph.entity_terms()`),
case-insensitively, on whole words, longest term first: in "small pleural effusion" the mention is
"pleural effusion", not "effusion". Spaces in a term also match hyphens or runs of whitespace, and a plural
"s"/"es" is accepted. Plain dicts and sets only: this module does not import the graph.
"""

from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# A number as a model writes one: sign, decimals (also ".5" and "12."), exponent ("1e1", "2.5E+1"). The text is
# NFKC-normalised first, so full-width digits and brackets ("［１２，３０，…］") read as ASCII.
_NUM = r"[-+\u2212]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SEP = r"\s*[,;]\s*"
# A box-like group: four numbers inside one bracket/paren pair ("[12, 34, 56, 78]", "[[12,34,56,78]]",
# "<box>12,34,56,78</box>" after tag stripping) or two coordinate pairs "(12,34),(56,78)" / "(12,34) to (56,78)".
_BOX_FOUR = re.compile(rf"[\[\(\{{]\s*({_NUM}){_SEP}({_NUM}){_SEP}({_NUM}){_SEP}({_NUM})\s*[\]\)\}}]")
_BOX_PAIRS = re.compile(
    rf"\(\s*({_NUM}){_SEP}({_NUM})\s*\)\s*(?:,|to|-|and)?\s*\(\s*({_NUM}){_SEP}({_NUM})\s*\)", re.IGNORECASE
)
_BOX_TAG = re.compile(r"</?(?:box|ref|quad)>|<\|(?:box|object_ref|quad)_(?:start|end)\|>", re.IGNORECASE)

# Free-form coordinates: unsigned numbers that are not part of a word ("T2", "3D", "C3" are names, not numbers;
# "12px" and "12x30" are numbers), chained when the text between two of them is only punctuation, symbols,
# spaces and coordinate words. Four chained numbers are a box.
_FREE_NUM = re.compile(r"(?<![\w.])(?:\d+(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?(?!\.?\d)(?=px\b|x|[^\w]|$)", re.IGNORECASE)
_SIZE_WORDS = r"w|h|width|height|wide|high|size"  # the box written as x, y, width, height
_COORD_WORDS = (r"to|and|by|from|between|x|y|x1|y1|x2|y2|x0|y0|xmin|ymin|xmax|ymax|top|left|bottom|right|upper"
                rf"|lower|corner|px|pixels?|coordinates?|point|through|till|until|at|bbox|box|{_SIZE_WORDS}")
# any character that is not a letter, digit or full stop joins (brackets and dashes of any script, `|`, `=`,
# `:`, `×`, ...), as do the coordinate words; a full stop ends a sentence
_JOINER = re.compile(rf"(?:[^\w.]|_|\b(?:{_COORD_WORDS})\b)*", re.IGNORECASE)
_SIZE_RE = re.compile(rf"\b(?:{_SIZE_WORDS})\b", re.IGNORECASE)
# A chain followed by one of these words is a measurement or a count ("4 x 5 x 6 x 7 mm", "3, 4, 5 and 6 ribs").
_NOT_COORD_AFTER = re.compile(
    r"\s*(?:mm|cm|m|um|\u00b5m|nm|ml|cc|l|kg|g|mg|hu|%|ms|s|sec|seconds?|min|minutes?|hours?|days?|weeks?|months?"
    r"|years?|yrs?|ribs?|vertebrae|levels?|lesions?|nodules?|slices?|images?|segments?|times|cases|patients)\b",
    re.IGNORECASE)
_MAX_JOINER = 40  # characters between two numbers of one chain


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "ok" | "empty" | "missing_locked" | "box_mismatch" | "foreign_entity"
    offending: tuple[str, ...] = ()  # the missing strings, the foreign boxes, or the foreign terms as written
    mentions: tuple[tuple[str, str], ...] = ()  # every (term as written, concept id) found in the text


class EntityMatcher:
    """Compiled matcher for one `entity_terms` mapping; build once and reuse for many texts."""

    def __init__(self, entity_terms: Mapping[str, str]):
        self.concept_of: dict[str, str] = {}
        for term, concept in entity_terms.items():
            norm = _norm_term(term)
            if norm:
                self.concept_of.setdefault(norm, concept)  # first wins on case/spacing duplicates
        # longest first: the regex alternation takes the first alternative that matches at a position
        terms = sorted(self.concept_of, key=lambda t: (-len(t), t))
        if terms:
            alt = "|".join(r"[\s\-]+".join(re.escape(w) for w in t.split(" ")) for t in terms)
            # (?<!\w) / (?!\w): whole words, also next to punctuation; (?:e?s)? accepts a plural
            self._re: re.Pattern | None = re.compile(rf"(?<![\w])(?:{alt})(?:e?s)?(?![\w])", re.IGNORECASE)
        else:
            self._re = None

    def mentions(self, text: str) -> list[tuple[str, str]]:
        """(term as written, concept id) for every mention, left to right, non-overlapping."""
        if self._re is None:
            return []
        found = []
        for m in self._re.finditer(text):
            surface = m.group(0)
            concept = self._lookup(surface)
            if concept is not None:
                found.append((surface, concept))
        return found

    def _lookup(self, surface: str) -> str | None:
        norm = _norm_term(surface)
        if norm in self.concept_of:
            return self.concept_of[norm]
        # the match carried a plural suffix: strip "es" or "s"
        for suffix in ("es", "s"):
            if norm.endswith(suffix) and norm[: -len(suffix)] in self.concept_of:
                return self.concept_of[norm[: -len(suffix)]]
        return None


def _norm_term(term: str) -> str:
    return " ".join(re.split(r"[\s\-]+", term.strip().lower())).strip()


# Small LRU of compiled matchers, keyed by the mapping's content, so `verify(..., dict)` in a loop compiles the
# (possibly thousands of terms) regex once.
_MATCHERS: "OrderedDict[tuple, EntityMatcher]" = OrderedDict()
_MATCHERS_MAX = 8


def _matcher(entity_terms: Mapping[str, str] | EntityMatcher) -> EntityMatcher:
    if isinstance(entity_terms, EntityMatcher):
        return entity_terms
    key = tuple(sorted(entity_terms.items()))
    m = _MATCHERS.get(key)
    if m is None:
        m = EntityMatcher(entity_terms)
        _MATCHERS[key] = m
        while len(_MATCHERS) > _MATCHERS_MAX:
            _MATCHERS.popitem(last=False)
    else:
        _MATCHERS.move_to_end(key)
    return m


@dataclass(frozen=True)
class BoxMention:
    values: tuple[float, float, float, float]  # the four numbers in the order written
    start: int  # where it starts in the NFKC-normalised text
    xywh: bool = False  # written with width/height words ("x=12, y=30, w=28, h=20"): x, y, width, height


def find_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """Every box-like coordinate group in `text`, as floats in the order written (module docstring, rule 3)."""
    return [m.values for m in box_mentions(text)]


def box_mentions(text: str) -> list[BoxMention]:
    """Every box-like coordinate group in `text` (NFKC-normalised: full-width digits and brackets are ASCII)."""
    t = _BOX_TAG.sub(lambda m: ")" if m.group(0).startswith("</") or "_end" in m.group(0) else "(",
                     unicodedata.normalize("NFKC", text))
    spans: list[tuple[int, int]] = []
    boxes: list[BoxMention] = []
    for rx in (_BOX_PAIRS, _BOX_FOUR):
        for m in rx.finditer(t):
            if any(m.start() < e and s < m.end() for s, e in spans):
                continue  # already counted by the other pattern
            spans.append((m.start(), m.end()))
            boxes.append(BoxMention(tuple(_float(g) for g in m.groups()), m.start()))  # type: ignore[arg-type]
    for chain in _free_chains(t, spans):
        for j in range(0, len(chain) - 3, 4):  # fewer than four left over: a point or a count, not a box
            four = chain[j:j + 4]
            before = t[max(0, four[0].start() - _MAX_JOINER):four[0].start()]
            lead = next(before[i:] for i in range(len(before) + 1) if _JOINER.fullmatch(before[i:]))  # "x=" ...
            words = lead + "".join(t[a.end():b.start()] for a, b in zip(four, four[1:]))
            boxes.append(BoxMention(tuple(_float(m.group(0)) for m in four), four[0].start(),  # type: ignore[arg-type]
                                    bool(_SIZE_RE.search(words))))
    return sorted(boxes, key=lambda b: b.start)


def _float(written: str) -> float:
    return float(written.replace("\u2212", "-"))


def _free_chains(t: str, taken: list[tuple[int, int]]) -> list[list[re.Match]]:
    """Runs of numbers outside `taken` joined only by punctuation and coordinate words, minus sizes and counts."""
    nums = [m for m in _FREE_NUM.finditer(t) if not any(s <= m.start() < e for s, e in taken)]
    chains: list[list[re.Match]] = []
    for m in nums:
        if chains:
            prev = chains[-1][-1]
            gap = t[prev.end():m.start()]
            if len(gap) <= _MAX_JOINER and _JOINER.fullmatch(gap) and not any(
                    prev.end() <= s < m.start() for s, _ in taken):
                chains[-1].append(m)
                continue
        chains.append([m])
    return [c for c in chains if len(c) >= 4 and not _NOT_COORD_AFTER.match(t, c[-1].end())]


def _same_box(a: BoxMention, b: Sequence[float], tol: float) -> bool:
    """`a` (as written) is box `b` (xyxy) written x1 y1 x2 y2 or x1 x2 y1 y2 ("x from 12 to 40, y from 30 to 50"),
    or, when written with width/height words, x1 y1 width height."""
    x1, y1, x2, y2 = (float(v) for v in b)
    orders = [(x1, y1, x2 - x1, y2 - y1)] if a.xywh else [(x1, y1, x2, y2), (x1, x2, y1, y2)]
    return any(all(abs(x - y) <= tol for x, y in zip(a.values, order)) for order in orders)


def verify(
    text: str | None,
    allowed: set[str] | frozenset[str],
    entity_terms: Mapping[str, str] | EntityMatcher,
    locked: Iterable[str] = (),
    boxes: Iterable[Sequence[float]] = (),
    box_tol: float = 1.0,
) -> Verdict:
    """Accept or reject one generated text (see the module docstring for the rules).

    `boxes`: the coordinates the text may quote, in the system the prompt used (e.g. the Qwen2.5-VL rendering
    of the record's box, and/or the normalised box). `box_tol` absorbs rounding (pixels).
    """
    if text is None or not text.strip():
        return Verdict(False, "empty")
    low = text.lower()
    missing = tuple(s for s in locked if s and s.lower() not in low)
    if missing:
        return Verdict(False, "missing_locked", missing)
    allowed_boxes = [tuple(b) for b in boxes]
    foreign_boxes = tuple(
        "[" + ", ".join(f"{v:g}" for v in b.values) + "]"
        for b in box_mentions(text)
        if not any(_same_box(b, a, box_tol) for a in allowed_boxes)
    )
    if foreign_boxes:
        return Verdict(False, "box_mismatch", foreign_boxes)
    mentions = tuple(_matcher(entity_terms).mentions(text))
    foreign = tuple(dict.fromkeys(surface for surface, concept in mentions if concept not in allowed))
    if foreign:
        return Verdict(False, "foreign_entity", foreign, mentions)
    return Verdict(True, "ok", (), mentions)

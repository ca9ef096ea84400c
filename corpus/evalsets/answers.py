"""Answer extraction from raw model outputs (docs/benchmarks.md §3). Rule-based and deterministic: no random or
similarity fallbacks; an output that no rule parses gives None, which scoring counts as wrong.

1. `clean`: drop the latent segment (`<Medlvr_Start>` ... `<Medlvr_End>`; an unclosed one runs to the end),
   `<think>` ... `</think>` blocks (an unclosed `<think>` runs to the next `<answer>` or the end; text before
   a stray `</think>` is dropped) and chat special tokens (`<|im_end|>`).
2. `answer_span`: the LAST `<answer>`...`</answer>` (an unclosed last `<answer>` runs to the end), else the last
   `\\boxed{...}`, else the text after the LAST cue ("final answer", "answer is", "answer:", "答案是" / "答案为" /
   "答案："), else everything.
3. Multiple choice (`parse_mc`), first rule wins, letters restricted to the valid option letters. The span is
   NFKC-normalised (full-width letters and colons) and an echoed option list ("A. liver B. kidney C. spleen",
   at least three options or all of them, each letter with its own text) is removed first. Rules:
   whole span is a letter ("B", "(b)", "B.", "D。"); span starts with "B." / "B)" / "B:" / "(B)"; last
   "answer/option/choice (is|:) (B" (or "答案/选项/选择 B"); exactly one standalone capital letter token (ASCII
   boundaries, so "是D。" counts; the article "A" and the pronoun "I" before a lowercase word do not count, a
   bracketed "(A)" always does); the span equals an option text; exactly one option text occurs in the span as
   whole words (an option whose text lies inside a longer matching option's is dropped). Option texts are
   compared case-, space- and hyphen-insensitively ("complement-mediated" = "Complement mediated"). A letter or
   option text the output rejects ("not A", "option B is incorrect", "C can be ruled out") does not count for
   any rule, so a text that rejects every option it names parses to None.
4. Yes/no (`parse_yesno`): whole words only; a yes/no within two words after a hedge ("maybe", "perhaps",
   "possibly", "either", "could", "might", "may") or right before or after "or" is hedged. First word yes/no (unhedged) -> it; else the unhedged
   matches: one polarity -> it, both -> the last; only hedged matches of both polarities ("maybe yes, maybe no")
   -> None; hedged matches of one polarity -> it.
5. Open (`parse_open`): the normalised span (lowercase, collapsed spaces, no edge punctuation), compared exactly.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

LATENT_START, LATENT_END, LATENT_TOKEN = "<Medlvr_Start>", "<Medlvr_End>", "<Medlvr_Latent>"

_LATENT = re.compile(re.escape(LATENT_START) + r".*?(?:" + re.escape(LATENT_END) + r"|\Z)", re.S)
_LATENT_STRAY = re.compile("|".join(re.escape(t) for t in (LATENT_START, LATENT_END, LATENT_TOKEN)))
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_THINK_OPEN = re.compile(r"<think>.*?(?=<answer>|\Z)", re.S | re.I)
_THINK_CLOSE = re.compile(r"^.*</think>", re.S | re.I)
_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_OPEN = re.compile(r"<answer>(?!.*<answer>)(.*)\Z", re.S | re.I)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_CUE = re.compile(r"final\s+answer\s*(?:is)?\s*:?|answer\s+is\s*:?|answer\s*:|答案\s*(?:是|为)?\s*[:：]?", re.I)

_WHOLE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LEAD_LETTER = re.compile(r"^(?:([A-Za-z])[.):]\s|\(([A-Za-z])\))")
# letter boundaries are ASCII: a CJK character next to a letter ("答案是D。") is not part of a word
_KEYWORD_LETTER = re.compile(r"(?:(?<![A-Za-z])(?i:answer|option|choice)\s*(?i:is)?\s*:?|答案|选项|选择|选)\s*(?:是|为)?"
                             r"\s*:?\s*\(?([A-Z])(?![A-Za-z0-9_'-])")
_LETTER = re.compile(r"(?<![A-Za-z0-9_'-])([A-Z])(?![A-Za-z0-9_'-])")
_TOKEN_PUNCT = re.compile(r"[.()\[\],:;!?*#{}\"'`]")
_WORD_AFTER = re.compile(r"\s+([a-z]+)")
_EDGE = " \t\r\n.,;:!?*_`'\"()[]{}"
_CJK_EDGE = "。，、；：！？"
_DASHES = "-\u2010\u2011\u2012\u2013\u2014_"  # hyphen-minus, the Unicode hyphens and dashes, underscore
# a letter / option text the output rejects: "not (option) A", "rule out A" before it; "is incorrect / wrong /
# unlikely / excluded / not the answer" after it in the same clause ("cannot be excluded" is not a rejection)
_NEG_BEFORE = re.compile(r"(?:\bnot|\bnever|\bisn't|\bexclud(?:e|es|ed|ing)|\brul(?:e|es|ed|ing)\s+out|"
                         r"\beliminat(?:e|es|ed|ing)|\bagainst)\s+(?:the\s+|an?\s+|options?\s+|choices?\s+)?[(\[]?$", re.I)
_NEG_AFTER = re.compile(r"^[\s.):\]]*[^.;,!?\n]{0,40}?\b(?:incorrect|wrong|unlikely|false|"
                        r"(?<!cannot be )(?<!can't be )(?<!not be )(?:excluded|ruled out|eliminated)|"
                        r"not\s+(?:correct|right|likely|(?:the\s+)?(?:correct\s+|right\s+|best\s+)?answer))\b", re.I)


def clean_latent(output: str | None) -> str:
    """The output without its latent segment (and stray control tokens), nothing else removed: what a served
    MedLVR model returns as its answer."""
    return _LATENT_STRAY.sub("", _LATENT.sub("", output or ""))


def clean(output: str | None) -> str:
    """The output without latent segment, think blocks and chat special tokens."""
    text = output or ""
    text = _LATENT.sub(" ", text)
    text = _LATENT_STRAY.sub(" ", text)
    text = _THINK.sub(" ", text)
    text = _THINK_OPEN.sub(" ", text)
    text = _THINK_CLOSE.sub(" ", text)
    text = _SPECIAL.sub(" ", text)
    return text.strip()


def answer_span(output: str | None) -> str:
    """The part of the cleaned output that holds the answer (module docstring, step 2)."""
    text = clean(output)
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    m = _ANSWER_OPEN.search(text)
    if m:
        return m.group(1).strip()
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    cues = list(_CUE.finditer(text))
    if cues:
        return text[cues[-1].end():].strip().lstrip("*: \t")
    return text


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip(_EDGE)


def _valid(letter: str | None, letters: set[str]) -> str | None:
    return letter.upper() if letter and letter.upper() in letters else None


def rejected(text: str, start: int, end: int) -> bool:
    """True when the mention text[start:end] (a letter or an option text) is rejected by the words around it."""
    return bool(_NEG_BEFORE.search(text[max(0, start - 30):start]) or _NEG_AFTER.match(text[end:end + 80]))


def _standalone_letters(span: str, letters: set[str]) -> set[str]:
    """Valid letters standing alone in `span` and not rejected there. Brackets mark a letter ("(A) because"
    names option A); a bare "A" / "I" before a lowercase word is the article or pronoun ("A lesion")."""
    found = set()
    for m in _LETTER.finditer(span):
        ch = m.group(1)
        if ch not in letters or rejected(span, m.start(), m.end()):
            continue
        bracketed = span[m.start() - 1:m.start()] in ("(", "[") or span[m.end():m.end() + 1] in (")", "]")
        if ch in "AI" and not bracketed:
            nxt = _WORD_AFTER.match(_TOKEN_PUNCT.sub(" ", span[m.end():m.end() + 40]))
            if nxt and nxt.group(1) not in ("is", "or", "and"):
                continue
        found.add(ch)
    return found


def match_text(text: str) -> str:
    """An option text or span as option matching compares it: `normalize` with hyphens, dashes and underscores
    as spaces ("Complement-mediated" = "complement mediated")."""
    return normalize(text.translate({ord(c): " " for c in _DASHES}))


def _mentions(haystack: str, needle: str) -> list[re.Match]:
    if not needle:
        return []
    return list(re.finditer(r"(?<![A-Za-z0-9_])" + re.escape(needle) + r"(?![A-Za-z0-9_])", haystack))


def strip_echoed_options(span: str, options: Sequence[tuple[str, str]]) -> str:
    """`span` without an echoed option list: every "A. text" / "(A) text" / "A) text" of an option with its own
    text, when at least three options (or all of them, for fewer) are echoed so; else `span` unchanged."""
    hits = []
    for letter, text in options:
        words = [re.escape(w) for w in re.split(rf"[\s{re.escape(_DASHES)}]+", text.strip()) if w]
        if not words:
            continue
        body = rf"[\s{re.escape(_DASHES)}]+".join(words)
        pat = rf"(?<![A-Za-z0-9])[(\[]?{re.escape(letter.upper())}\s*[.):\]]\s*(?i:{body})(?![A-Za-z0-9])"
        hits.extend((letter, m.span()) for m in re.finditer(pat, span))
    if len({letter for letter, _ in hits}) < max(2, min(3, len(options))):
        return span
    for _, (a, b) in sorted(hits, key=lambda h: -h[1][0]):  # from the end: earlier offsets stay valid
        span = span[:a] + " " + span[b:]
    return span.strip()


def parse_mc(output: str | None, options: Sequence[tuple[str, str]]) -> str | None:
    """The chosen option letter, or None."""
    letters = {letter.upper() for letter, _ in options}
    span = strip_echoed_options(unicodedata.normalize("NFKC", answer_span(output)), options)
    if not span or not letters:
        return None
    core = span.strip().strip("*_` " + _CJK_EDGE)
    m = _WHOLE_LETTER.match(core)
    if m and _valid(m.group(1), letters):
        return m.group(1).upper()
    m = _LEAD_LETTER.match(core)
    if m and _valid(m.group(1) or m.group(2), letters) and not rejected(core, 0, m.end()):
        return (m.group(1) or m.group(2)).upper()
    hits = [h.group(1) for h in _KEYWORD_LETTER.finditer(span)
            if h.group(1) in letters and not rejected(span, h.start(1), h.end(1))]
    if hits:
        return hits[-1]
    tokens = _standalone_letters(span, letters)
    if len(tokens) == 1:
        return tokens.pop()
    norm = match_text(span)
    texts = [(letter.upper(), match_text(text)) for letter, text in options]
    equal = [letter for letter, t in texts if t and t == norm]
    if len(equal) == 1:
        return equal[0]
    found = [(letter, t) for letter, t in texts
             if any(not rejected(norm, m.start(), m.end()) for m in _mentions(norm, t))]
    found = [(letter, t) for letter, t in found if not any(t != u and t in u for _, u in found)]
    if len({t for _, t in found}) == 1 and len(found) == 1:
        return found[0][0]
    return None


_HEDGES = {"maybe", "perhaps", "possibly", "either", "could", "might", "may"}  # within two words before


def parse_yesno(output: str | None) -> str | None:
    """"yes", "no", or None. Whole words only: "nodule", "know", "not" are not "no". Hedged matches ("maybe yes,
    maybe no", "yes or no") decide only when nothing unhedged does, and both polarities hedged is no answer."""
    words = re.findall(r"[a-z0-9]+", answer_span(output).lower())
    if not words:
        return None
    hits = []  # (polarity, hedged)
    for i, w in enumerate(words):
        if w in ("yes", "no"):
            # "or" right before or after: one side of an alternative ("yes or no"), not an answer
            hedged = any(b in _HEDGES for b in words[max(0, i - 2):i]) or "or" in (words[i - 1:i] + words[i + 1:i + 2])
            hits.append((w, hedged))
    if not hits:
        return None
    if words[0] in ("yes", "no") and not hits[0][1]:
        return words[0]
    firm = [p for p, hedged in hits if not hedged]
    if firm:
        return firm[-1]
    polarities = {p for p, _ in hits}
    return polarities.pop() if len(polarities) == 1 else None


def parse_open(output: str | None) -> str | None:
    """The normalised answer span for free-text answers, or None when empty."""
    return normalize(answer_span(output)) or None


def parse_answer(output: str | None, kind: str, options: Sequence[tuple[str, str]] = ()) -> str | None:
    if kind == "mc":
        return parse_mc(output, options)
    if kind == "yesno":
        return parse_yesno(output)
    if kind == "open":
        return parse_open(output)
    raise ValueError(f"unknown answer kind {kind!r}")


def gold_key(kind: str, answer: str) -> str:
    """The gold answer in the form `parse_answer` returns."""
    if kind == "mc":
        return answer.strip().upper()
    if kind == "yesno":
        return answer.strip().lower()
    return normalize(answer)


def is_correct(parsed: str | None, kind: str, answer: str) -> bool:
    return parsed is not None and parsed == gold_key(kind, answer)

"""Answer extraction from raw model outputs (docs/benchmarks.md §3). Rule-based and deterministic: no random or
similarity fallbacks; an output that no rule parses gives None, which scoring counts as wrong.

1. `clean`: drop the latent segment (`<Medlvr_Start>` ... `<Medlvr_End>`; an unclosed one runs to the end),
   `<think>` ... `</think>` blocks (an unclosed `<think>` runs to the next `<answer>` or the end; text before
   a stray `</think>` is dropped) and chat special tokens (`<|im_end|>`).
2. `answer_span`: the LAST `<answer>`...`</answer>` (an unclosed last `<answer>` runs to the end), else the last
   `\\boxed{...}`, else the text after the LAST cue ("final answer", "answer is", "answer:"), else everything.
3. Multiple choice (`parse_mc`), first rule wins, letters restricted to the valid option letters:
   whole span is a letter ("B", "(b)", "B."); span starts with "B." / "B)" / "B:" / "(B)"; last
   "answer/option/choice (is|:) (B"; exactly one standalone capital letter token (the article "A" and the
   pronoun "I" before a lowercase word do not count); the span equals an option text; exactly one option text
   occurs in the span as whole words (an option whose text lies inside a longer matching option's is dropped).
4. Yes/no (`parse_yesno`): first word yes/no, else whole-word matches: one polarity -> it, both -> the last.
5. Open (`parse_open`): the normalised span (lowercase, collapsed spaces, no edge punctuation), compared exactly.
"""

from __future__ import annotations

import re
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
_CUE = re.compile(r"final\s+answer\s*(?:is)?\s*:?|answer\s+is\s*:?|answer\s*:", re.I)

_WHOLE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LEAD_LETTER = re.compile(r"^(?:([A-Za-z])[.):]\s|\(([A-Za-z])\))")
_KEYWORD_LETTER = re.compile(r"(?<![A-Za-z])(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?([A-Z])\b(?![-'])")
_TOKEN_PUNCT = re.compile(r"[.()\[\],:;!?*#{}\"'`]")
_WORD_AFTER = re.compile(r"\s+([a-z]+)")
_EDGE = " \t\r\n.,;:!?*_`'\"()[]{}"


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


def _standalone_letters(span: str, letters: set[str]) -> set[str]:
    found = set()
    for m in re.finditer(r"(?<![\w'-])([A-Z])(?![\w'-])", span):
        ch = m.group(1)
        if ch not in letters:
            continue
        if ch in "AI":  # article / pronoun guard: "A lesion", "I think" (but "A is correct" is a letter)
            nxt = _WORD_AFTER.match(span, m.end())
            if nxt and nxt.group(1) not in ("is", "or", "and"):
                continue
        found.add(ch)
    return found


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", haystack) is not None


def parse_mc(output: str | None, options: Sequence[tuple[str, str]]) -> str | None:
    """The chosen option letter, or None."""
    letters = {letter.upper() for letter, _ in options}
    span = answer_span(output)
    if not span or not letters:
        return None
    core = span.strip().strip("*_` ")
    m = _WHOLE_LETTER.match(core)
    if m and _valid(m.group(1), letters):
        return m.group(1).upper()
    m = _LEAD_LETTER.match(core)
    if m and _valid(m.group(1) or m.group(2), letters):
        return (m.group(1) or m.group(2)).upper()
    hits = [h.group(1) for h in _KEYWORD_LETTER.finditer(span) if h.group(1) in letters]
    if hits:
        return hits[-1]
    tokens = _standalone_letters(_TOKEN_PUNCT.sub(" ", span), letters)
    if len(tokens) == 1:
        return tokens.pop()
    norm = normalize(span)
    texts = [(letter.upper(), normalize(text)) for letter, text in options]
    equal = [letter for letter, t in texts if t and t == norm]
    if len(equal) == 1:
        return equal[0]
    found = [(letter, t) for letter, t in texts if _contains(norm, t)]
    found = [(letter, t) for letter, t in found if not any(t != u and t in u for _, u in found)]
    if len({t for _, t in found}) == 1 and len(found) == 1:
        return found[0][0]
    return None


def parse_yesno(output: str | None) -> str | None:
    """"yes", "no", or None. Whole words only: "nodule", "know", "not" are not "no"."""
    words = re.findall(r"[a-z0-9]+", answer_span(output).lower())
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0]
    hits = [w for w in words if w in ("yes", "no")]
    return hits[-1] if hits else None


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

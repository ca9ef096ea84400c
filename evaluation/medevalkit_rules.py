"""MedEvalKit's prompts and rule-based judges, re-implemented (the `medevalkit` scoring protocol).

MedEvalKit (Lingshu's evaluation kit; Apache-2.0 per its README) scores closed-form medical VQA with string rules.
This module re-states those rules in MedLVR's own code (nothing copied), so that numbers under `protocol:
medevalkit` are comparable with figures published from it (Lingshu, MedGemma, HuatuoGPT-Vision). How the rules
were checked against MedEvalKit's own functions: docs/benchmarks.md §3.8.

The rules, per answer form:
* response preparation (`prepare`): SLAKE / VQA-RAD take the last `\\boxed{...}` when there is one, else the
  text of the `<answer>` tags when present (VQA-RAD then lower-cases and strips); OmniMedVQA / MedXpertQA take
  the `<answer>` tags' text; PMC-VQA and MMMU use the response as it is.
* `extract_answer`: lower-case; the last `\\boxed{...}` if "boxed" appears (the literal "None" when it cannot be
  closed), else the `<answer>` text; then the text after the last occurrence of each answer cue, in turn.
* yes/no (`judge_yes_no`): after `extract_answer`, dots and newlines removed: exactly one of the substrings "yes"
  and "no" occurs (so "not" and "know" count as "no"), and the gold is a substring.
* closed short answer (`judge_closed`): the prepared answer (dots and newlines removed) equals the gold, lower-cased.
* open answer (`judge_open`): exact match of `extract_answer(response)` with the lower-cased gold (BLEU / ROUGE /
  F1 are reported by MedEvalKit beside it, not used for accuracy).
* multiple choice (`judge_choice`): a bare letter answer is taken from the first or the last paragraph; then the
  first sentence's text after its last colon is compared with the gold letter / option; failing every rule, the
  option most similar to the whole response (`difflib` ratio) is the answer: a similarity fallback MedLVR's own
  protocol does not have.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

ANSWER_CUES = ("**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:", "答案:",
               "final answer", "final answer is")

# prompts (English)
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
YES_NO_SUFFIX = "Please output 'yes' or 'no'(no extra output)."
CLOSED_SUFFIX = "Answer the question using a single word or phrase."
OPEN_SUFFIX = "Please answer the question concisely."


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces balanced, stripped), None when there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    body = text[start + len("\\boxed{"):]
    for i, ch in enumerate(body):
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return body[:i].strip()
    return None


def tagged(text: str, tag: str = "answer") -> str:
    """The contents of every complete `<tag>...</tag>`, joined by spaces; the text itself when there is none."""
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    parts, pos = [], text.find(open_t)
    while pos >= 0:
        end = text.find(close_t, pos + len(open_t))
        if end < 0:
            break
        parts.append(text[pos + len(open_t):end])
        pos = text.find(open_t, end + len(close_t))
    found = " ".join(parts).strip()
    return found if found else text


def extract_answer(response: str) -> str:
    text = response.lower()
    if "boxed" in text:
        boxed = last_boxed(text)
        text = "None" if boxed is None else boxed  # MedEvalKit's "not found" value, capitalised as it is there
    elif "<answer>" in text:
        text = tagged(text)
    for cue in ANSWER_CUES:
        if cue in text:
            text = text.split(cue)[-1]
    return text


def _squeeze(text: str) -> str:
    return text.replace("\n", "").replace(".", "")


def judge_yes_no(gold: str, response: str) -> bool:
    text = _squeeze(extract_answer(response))
    return (("yes" in text) != ("no" in text)) and gold.lower() in text


def judge_closed(gold: str, response: str) -> bool:
    return _squeeze(extract_answer(response)) == gold.lower()


def judge_open(gold: str, response: str) -> bool:
    return extract_answer(response) == gold.lower()


def judge_choice(choices: Sequence[str], gold: str, response: str) -> bool:
    """`choices` as MedEvalKit lists them ("A. text"), `gold` the letter (or the option text)."""
    letters = [chr(ord("a") + i) for i in range(len(choices))]
    text = response.lower()
    paragraphs = text.split("\n\n")
    if paragraphs[0] in letters:
        text = paragraphs[0]
    elif paragraphs[-1].split(".")[0] in letters:
        text = paragraphs[-1].split(".")[0]
    text = extract_answer(text).strip().lower().replace("\n", "")
    head = text.split(".")[0].split(":")[-1]
    options = [c.lower() for c in choices]
    gold = gold.strip().lower()
    if head == gold:
        return True
    if head in letters:
        return options[ord(head) - ord("a")] == gold
    if head in options:
        return gold in letters and head == options[ord(gold) - ord("a")]
    best, high = 0, 0.0  # the first option of the highest positive similarity; option A when none is positive
    for i, option in enumerate(options):
        ratio = difflib.SequenceMatcher(None, option, text).ratio()
        if ratio > high:
            best, high = i, ratio
    return bool(options) and (letters[best] == gold or options[best] == gold)


def prepare(benchmark: str, response: str) -> str:
    """The response as each MedEvalKit dataset class hands it to its judge (module docstring)."""
    if benchmark in ("slake", "vqa_rad"):
        boxed = last_boxed(response)
        if boxed is not None and boxed != "None":
            response = boxed
        elif "<answer>" in response:
            response = tagged(response)
        return response.lower().strip() if benchmark == "vqa_rad" else response
    if benchmark in ("omnimedvqa", "medxpertqa_mm"):
        return tagged(response)
    return response


def prompt(benchmark: str, question: str, kind: str, options: Sequence[tuple[str, str]], tags: dict) -> str:
    """MedEvalKit's English prompt for a sample (its answer form decides, as there: SLAKE by answer_type, VQA-RAD
    by whether the gold is yes/no, the rest multiple choice)."""
    if kind == "mc":
        listed = "\n".join(f"{letter}. {text}" for letter, text in options)
        return f"\nQuestion: {question}\nOptions: \n{listed}\n{MC_SUFFIX}"
    if benchmark == "slake":
        return f"{question}\n{OPEN_SUFFIX if tags.get('answer_type') == 'open' else CLOSED_SUFFIX}"
    return f"{question}\n{YES_NO_SUFFIX if kind == 'yesno' else OPEN_SUFFIX}"


def verdict(benchmark: str, output: str, kind: str, answer: str, options: Sequence[tuple[str, str]],
            tags: dict) -> tuple[str, bool]:
    """(the answer as extracted, correct) under MedEvalKit's rules for this benchmark's answer forms."""
    response = prepare(benchmark, output)
    if kind == "mc":
        return extract_answer(response).strip(), judge_choice([f"{k}. {t}" for k, t in options], answer, response)
    gold = str(tags.get("answer_raw", answer))
    if benchmark == "slake":
        if tags.get("answer_type") == "open":
            return extract_answer(response), judge_open(gold, response)
        if gold in ("yes", "no"):  # as there: a capitalised "Yes" is judged as a short answer, not yes/no
            return extract_answer(response), judge_yes_no(gold, response)
        return extract_answer(response), judge_closed(gold, response)
    gold = gold.lower().strip()
    if gold in ("yes", "no"):
        return extract_answer(response), judge_yes_no(gold, response)
    return extract_answer(response), judge_open(gold, response)

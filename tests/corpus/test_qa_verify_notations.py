"""The QA verifier against every box notation a VLM writes: each is matched against the record's boxes or
rejected. The three notations of the last fault-injection run (`x=12,y=30 w=28,h=20`, `[ 1e1, 30, 40, 50 ]`,
`［12，30，40，50］`) first, then a property test over generated notations (brackets of several scripts,
separators, number formats, coordinate labels, full-width text). The expected verdict comes from the box values
the generator wrote, never from the verifier's own parser."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medlvr.corpus.qa.verify import verify

RECORD_BOX = (49.0, 28.0, 98.0, 56.0)
TOL = 1.0


def _verdict(text: str, boxes=(RECORD_BOX,)):
    return verify(text, set(), {}, (), boxes=list(boxes), box_tol=TOL)


@pytest.mark.parametrize("notation", ["x=12,y=30 w=28,h=20", "[ 1e1, 30, 40, 50 ]", "［12，30，40，50］",
                                      "［１２，３０，４０，５０］", "x=12, y=30, width=28, height=20",
                                      "<|box_start|>(12,30),(40,50)<|box_end|>", "【12, 30, 40, 50】",
                                      "12|30|40|50", "{12; 30; 40; 50}", "x: 12−40, y: 30−50"])
def test_an_invented_box_is_rejected(notation):
    v = _verdict(f"The finding lies in {notation}.")
    assert v.reason == "box_mismatch", (notation, v)
    assert not _verdict(f"The finding lies in {notation}.", boxes=()).ok  # no box allowed at all


@pytest.mark.parametrize("notation", ["x=49,y=28 w=49,h=28", "[ 4.9e1, 28, 98, 56 ]", "［49，28，98，56］",
                                      "x=49, y=28, width=49, height=28"])
def test_the_records_own_box_is_accepted_in_these_notations(notation):
    assert _verdict(f"The finding lies in {notation}.").ok, notation


# ------------------------------------------------------------------------------------------- property test

FULL_WIDTH = str.maketrans({**{str(d): chr(0xFF10 + d) for d in range(10)}, ".": "\uff0e", ",": "\uff0c",
                            "[": "\uff3b", "]": "\uff3d", "(": "\uff08", ")": "\uff09", ":": "\uff1a",
                            "=": "\uff1d"})
BRACKETS = [("[", "]"), ("(", ")"), ("{", "}"), ("[[", "]]"), ("【", "】"), ("〔", "〕"), ("<box>", "</box>"),
            ("<|box_start|>", "<|box_end|>"), ("", ""), ("box: ", ""), ("bbox ", "")]
SEPARATORS = [", ", ",", " ", "; ", " , ", "|", "/", " x ", "\t", " - "]
LABELS = {  # coordinate labels: the order the four values are written in, and the label before each
    "plain": ("xyxy", ["", "", "", ""]),
    "x1y1": ("xyxy", ["x1=", "y1=", "x2=", "y2="]),
    "minmax": ("xyxy", ["xmin: ", "ymin: ", "xmax: ", "ymax: "]),
    "sides": ("xyxy", ["left ", "top ", "right ", "bottom "]),
    "x_range": ("xxyy", ["x from ", "to ", "and y from ", "to "]),
    "xywh": ("xywh", ["x=", "y=", "w=", "h="]),
    "xywh_words": ("xywh", ["x ", "y ", "width ", "height "]),
}


def _number(value: float, style: str) -> str:
    if style == "int":
        return f"{value:.0f}"
    if style == "dec":
        return f"{value:.1f}"
    if style == "exp":
        return f"{value:e}"
    if style == "px":
        return f"{value:.0f}px"
    return f"{value:.2f}"


@st.composite
def notations(draw, box=None):
    """(text, the xyxy box it writes) for one generated notation of `box` (default: a random box)."""
    if box is None:
        x1, y1 = draw(st.integers(0, 900)), draw(st.integers(0, 900))
        x2, y2 = x1 + draw(st.integers(1, 300)), y1 + draw(st.integers(1, 300))
    else:
        x1, y1, x2, y2 = box
    order, labels = LABELS[draw(st.sampled_from(sorted(LABELS)))]
    values = {"xyxy": (x1, y1, x2, y2), "xxyy": (x1, x2, y1, y2), "xywh": (x1, y1, x2 - x1, y2 - y1)}[order]
    style = draw(st.sampled_from(["int", "dec", "exp", "px", "two"]))
    numbers = [label + _number(v, style) for label, v in zip(labels, values)]
    sep = draw(st.sampled_from(SEPARATORS))
    opening, closing = draw(st.sampled_from(BRACKETS))
    body = opening + sep.join(numbers) + closing
    if draw(st.booleans()):
        body = body.translate(FULL_WIDTH)
    text = draw(st.sampled_from(["The finding lies in {}.", "Region {} shows the lesion.", "{}", "At {}, a mass."]))
    return text.format(body), (x1, y1, x2, y2)


def _is_record_box(box) -> bool:
    return all(abs(a - b) <= TOL for a, b in zip(box, RECORD_BOX))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notations())
def test_no_generated_box_notation_slips_past(case):
    text, box = case
    assume(not _is_record_box(box))
    v = _verdict(text)
    assert v.reason == "box_mismatch", (text, v)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notations(RECORD_BOX))
def test_the_records_own_box_is_accepted_in_every_generated_notation(case):
    text, _ = case
    v = _verdict(text)
    assert v.ok, (text, v)

"""The answer parser on a table of tricky outputs (docs/benchmarks.md §3)."""

import pytest

from medlvr.corpus.evalsets.answers import answer_span, clean, is_correct, parse_answer, parse_mc, parse_yesno

OPTS = (("A", "liver"), ("B", "kidney"), ("C", "spleen"), ("D", "lung"))
OPTS5 = (("A", "Pneumothorax"), ("B", "Pleural effusion"), ("C", "Pneumonia"), ("D", "Atelectasis"),
         ("E", "Normal"))
NESTED = (("A", "CT"), ("B", "CT with contrast"), ("C", "MRI"), ("D", "PET"))
ARTICLES = (("A", "A tumour"), ("B", "A cyst"), ("C", "A vessel"), ("D", "A calcification"))
LAT = "<Medlvr_Start><Medlvr_Latent><Medlvr_Latent><Medlvr_End>"

MC_CASES = [
    # (output, options, expected letter)
    ("B", OPTS, "B"),
    ("(B)", OPTS, "B"),
    ("B)", OPTS, "B"),
    ("B.", OPTS, "B"),
    ("b", OPTS, "B"),
    ("Answer: b", OPTS, "B"),
    ("**Answer:** C", OPTS, "C"),
    ("B) kidney", OPTS, "B"),
    ("B. The kidney is enlarged.", OPTS, "B"),
    ("(C) spleen", OPTS, "C"),
    ("<answer> D </answer>", OPTS, "D"),
    ("<answer>(A)</answer>", OPTS, "A"),
    (f"{LAT}<answer>C</answer>", OPTS, "C"),
    (f"{LAT}B", OPTS, "B"),
    ("<think>A looks wrong, B maybe, C is the spleen.</think><answer>C</answer>", OPTS, "C"),
    ("<think>Options A and B are unlikely.</think> The answer is D.", OPTS, "D"),
    ("<think>unclosed A or B reasoning <answer>B</answer>", OPTS, "B"),
    ("leftover reasoning says A</think>C", OPTS, "C"),
    # the LAST answer tag / cue wins (repeated answers)
    ("<answer>A</answer> Wait, let me reconsider. <answer>C</answer>", OPTS, "C"),
    ("The answer is A. No, on reflection the answer is B.", OPTS, "B"),
    ("Final answer: (D)", OPTS, "D"),
    ("The correct answer is: C) spleen", OPTS, "C"),
    ("\\boxed{B}", OPTS, "B"),
    ("I choose option C because the organ is in the left upper quadrant.", OPTS, "C"),
    # several letters, no cue -> ambiguous -> None (no guessing)
    ("It is either B or C.", OPTS, None),
    ("A, B", OPTS, None),
    # option text only
    ("kidney", OPTS, "B"),
    ("The image shows the kidney.", OPTS, "B"),
    ("<answer>Pleural effusion</answer>", OPTS5, "B"),
    ("liver or kidney", OPTS, None),
    # option text inside a longer option text: the longer one wins; the shorter alone is still itself
    ("CT with contrast", NESTED, "B"),
    ("It was a CT.", NESTED, "A"),
    # letters inside words are not letters; the article "A" is not option A
    ("CT shows a DWI bright lesion", OPTS, None),
    ("A lesion of the spleen", OPTS, "C"),
    ("I think it is the lung", OPTS, "D"),
    ("A is correct", OPTS, "A"),
    ("A cyst", ARTICLES, "B"),
    # letters outside the valid range are not accepted
    ("E", OPTS, None),
    ("E", OPTS5, "E"),
    # answer only inside the latent segment, or nothing at all
    ("<Medlvr_Start>B<Medlvr_End>", OPTS, None),
    ("<Medlvr_Start>the answer is B", OPTS, None),
    ("<think>the answer is B</think>", OPTS, None),
    ("", OPTS, None),
    (None, OPTS, None),
    ("<answer></answer> B", OPTS, None),
    ("I cannot tell from this image.", OPTS, None),
    ("B<|im_end|>", OPTS, "B"),
]

YESNO_CASES = [
    ("Yes", "yes"),
    ("no.", "no"),
    ("NO", "no"),
    ("Yes, the lung is normal.", "yes"),
    ("No, there is a nodule.", "no"),
    ("There is a nodule in the left lung, yes.", "yes"),
    ("I do not know", None),
    ("The findings are normal and there is nothing notable", None),
    ("Not sure, nodular opacity", None),
    ("<answer>no</answer>", "no"),
    ("<think>At first yes, but</think><answer>No</answer>", "no"),
    ("<answer>yes</answer> ... <answer>no</answer>", "no"),
    ("It could be yes but on balance no", "no"),
    ("The answer is yes.", "yes"),
    (f"{LAT}Yes", "yes"),
    ("<Medlvr_Start>yes<Medlvr_End>", None),
    ("", None),
    ("Yesterday's scan shows no change", "no"),
]


@pytest.mark.parametrize("output,options,expected", MC_CASES)
def test_parse_mc(output, options, expected):
    assert parse_mc(output, options) == expected


@pytest.mark.parametrize("output,expected", YESNO_CASES)
def test_parse_yesno(output, expected):
    assert parse_yesno(output) == expected


def test_clean_and_span():
    assert clean("<think>x</think>" + LAT + " B ") == "B"
    assert clean("a <Medlvr_Start> latent text never closed") == "a"
    assert answer_span("blah <answer>C</answer> tail") == "C"
    assert answer_span("blah <answer> C (unclosed") == "C (unclosed"
    assert answer_span("Answer: **B**") == "B**"
    assert answer_span("no cue at all") == "no cue at all"


def test_parse_answer_dispatch_and_correctness():
    assert parse_answer("<answer>Transverse Plane.</answer>", "open") == "transverse plane"
    assert is_correct(parse_answer("<answer>Transverse plane</answer>", "open"), "open", "Transverse Plane")
    assert not is_correct(parse_answer("", "open"), "open", "")
    assert is_correct(parse_answer("Yes.", "yesno"), "yesno", "Yes")
    assert is_correct(parse_answer("(b)", "mc", OPTS), "mc", "B")
    assert not is_correct(None, "mc", "B")
    with pytest.raises(ValueError):
        parse_answer("x", "ranking")


def test_keyword_needs_word_start():
    assert parse_mc("Reanswer B or C", OPTS) is None
    assert parse_mc("Options B and C are wrong, so choice A", OPTS) == "A"


# ---------------------------------------------------------------- misreadings on real model outputs (issue 17.9)
COMPLEMENT = (("A", "Complement-mediated lysis"), ("B", "Antibody-dependent cellular cytotoxicity"),
              ("C", "T cell mediated cytotoxicity"), ("D", "Immune complex deposition"))

# Each class: outputs of that shape (phrasing as public models write it) -> the letter a reader takes from them.
BRACKETED_ARTICLE = [  # "(A)" before a lowercase word names option A, it is not the article
    ("I would choose (A) because the lesion is hypodense and well circumscribed.", OPTS, "A"),
    ("Looking at the scan, (A) seems most consistent with the hypodense lesion.", OPTS, "A"),
    ("My answer would be (A) since the other organs look normal.", OPTS, "A"),
    ("[A] fits the findings best.", OPTS, "A"),
    ("The best choice here is A) liver, given the location.", OPTS, "A"),
    ("A lesion in the spleen is seen.", OPTS, "C"),  # still the article
]
ECHOED_LIST = [  # the model repeats the options: not an answer, or the answer is what follows them
    ("A. liver\nB. kidney\nC. spleen\nD. lung", OPTS, None),
    ("A) liver B) kidney C) spleen D) lung", OPTS, None),
    ("(A) liver (B) kidney (C) spleen (D) lung", OPTS, None),
    ("A. Pneumothorax B. Pleural effusion C. Pneumonia D. Atelectasis E. Normal", OPTS5, None),
    ("A. liver\nB. kidney\nC. spleen\nD. lung\nC", OPTS, "C"),
    ("A. liver B. kidney C. spleen D. lung. The spleen is enlarged with a wedge-shaped infarct.", OPTS, "C"),
    ("B. kidney", OPTS, "B"),  # one option with its text is an answer, not an echo
]
REJECTS_ALL = [  # a text that rejects every option it names picks none of them
    ("Option A is incorrect, option B is incorrect, option C is incorrect, option D is incorrect.", OPTS, None),
    ("It is not A. Choice B is wrong as well, and option C can be ruled out; D is also unlikely.", OPTS, None),
    ("None of the options fit: the answer is not A, not B, not C and not D.", OPTS, None),
    ("A is not correct.", OPTS, None),
    ("The organ shown is not the liver.", OPTS, None),
    # ... while a rejection next to a choice leaves the choice
    ("Option A is incorrect, option B is incorrect, so the answer is option C.", OPTS, "C"),
    ("The answer is C, not D.", OPTS, "C"),
    ("The liver is unlikely here; the kidney shows the mass.", OPTS, "B"),
    ("Malignancy in (C) cannot be excluded.", OPTS, "C"),
]
HYPHENS = [  # option texts match regardless of hyphens, case and spacing
    ("The mechanism is complement mediated lysis.", COMPLEMENT, "A"),
    ("COMPLEMENT-MEDIATED LYSIS", COMPLEMENT, "A"),
    ("This is antibody dependent  cellular cytotoxicity.", COMPLEMENT, "B"),
    ("T-cell-mediated cytotoxicity", COMPLEMENT, "C"),
    ("<answer>immune-complex deposition</answer>", COMPLEMENT, "D"),
]
CJK = [  # a letter next to CJK characters or full-width punctuation
    ("答案是D。", OPTS, "D"),
    ("正确答案为：B", OPTS, "B"),
    ("我选择C，因为病灶位于左上腹。", OPTS, "C"),
    ("根据影像表现，最可能的是A。", OPTS, "A"),
    ("答案：（Ｂ）", OPTS, "B"),
]


@pytest.mark.parametrize("output,options,expected", BRACKETED_ARTICLE + ECHOED_LIST + REJECTS_ALL + HYPHENS + CJK)
def test_parse_mc_misreadings(output, options, expected):
    assert parse_mc(output, options) == expected


HEDGES = [
    ("maybe yes, maybe no", None),
    ("Perhaps yes, perhaps no; the image quality is too poor to say.", None),
    ("It is hard to tell: possibly yes or possibly no.", None),
    ("Either yes or no, the finding is equivocal.", None),
    ("I cannot say yes or no from this view.", None),
    ("Yes or no? Looking closer, I would say no.", "no"),  # a hedge, then a firm answer
    ("Is there a pleural effusion, yes or no? No.", "no"),  # the question echoed, then the answer
    ("It could be yes but on balance no", "no"),
    ("Possibly yes.", "yes"),  # one polarity, hedged: still that answer
]


@pytest.mark.parametrize("output,expected", HEDGES)
def test_parse_yesno_hedges(output, expected):
    assert parse_yesno(output) == expected

"""OmniMedVQA loader on the bundled sample writer: format, seeded per-modality split, Med-R1 split files, errors."""

import json
from collections import Counter

import pytest

from medlvr.corpus.evalsets.base import BenchmarkError, open_image
from medlvr.corpus.evalsets.registry import get_benchmark
from medlvr.corpus.evalsets.omnimedvqa import load_omnimedvqa, parse_medr1_problem
from medlvr.corpus.evalsets.omnimedvqa import write_omnimedvqa


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_omnimedvqa(tmp_path_factory.mktemp("omni"), seed=0, per_modality=10)


def test_registered_and_samples_well_formed(root):
    assert get_benchmark("omnimedvqa").loader is load_omnimedvqa
    allv = list(load_omnimedvqa(root, "all"))
    assert len(allv) == 80
    s = allv[0]
    assert s.kind == "mc" and s.answer in dict(s.options) and s.images[0].startswith("file://")
    assert set(s.tags) >= {"modality", "question_type", "source", "split"}
    assert {x.tags["modality"] for x in allv} == {"CT", "MRI", "X-Ray", "Ultrasound", "Dermoscopy", "Fundus", "OCT",
                                                  "Microscopy"}
    assert {len(x.options) for x in allv} == {2, 3, 4}
    open_image(s.images[0])
    # gt_answer is option TEXT in the files: the loader maps it back to the letter
    raw = json.loads((root / "QA_information/Open-access/MIAS.json").read_text())[0]
    m = next(x for x in allv if x.tags["question_id"] == raw["question_id"])
    assert m.answer_text == raw["gt_answer"]
    # the record spelled with `modality` instead of `modality_type` is normalised
    assert sum(x.tags["source"] == "Chest CT Scan" for x in allv) == 10


def test_seeded_split_per_modality(root):
    test = list(load_omnimedvqa(root, "test", seed=0))
    train = list(load_omnimedvqa(root, "train", seed=0))
    assert len(test) + len(train) == 80 and not {s.sample_id for s in test} & {s.sample_id for s in train}
    assert Counter(s.tags["modality"] for s in test) == Counter({m: 2 for m in Counter(
        s.tags["modality"] for s in test)}) and len(test) == 16  # 20% of 10 in every modality
    again = [s.sample_id for s in load_omnimedvqa(root, "test", seed=0)]
    assert again == [s.sample_id for s in test]
    other = [s.sample_id for s in load_omnimedvqa(root, "test", seed=1)]
    assert set(other) != set(again)
    assert [s.tags["modality"] for s in load_omnimedvqa(root, "test", modalities=["CT"])] == ["CT", "CT"]


def test_medr1_split_files(root):
    test = list(load_omnimedvqa(root, "test", splits_dir=root / "Splits" / "modality"))
    assert len(test) == 16 and all(s.tags["split"] == "test" for s in test)
    # the question type is recovered from the open-access JSON; options and gold from the inlined problem
    assert all(s.tags["question_type"] != "unknown" for s in test)
    by_id = {s.sample_id: s for s in load_omnimedvqa(root, "all")}
    for s in test:
        assert s.options == by_id[s.sample_id].options and s.answer == by_id[s.sample_id].answer
    q, opts = parse_medr1_problem("What is it? A)X-ray, B)MRI, C)Echocardiogram, D)Mammography")
    assert q == "What is it?" and opts[3] == ("D", "Mammography")


def test_errors_are_clear(tmp_path, root):
    with pytest.raises(BenchmarkError, match="does not exist"):
        list(load_omnimedvqa(tmp_path / "nope"))
    with pytest.raises(BenchmarkError, match="Open-access"):
        list(load_omnimedvqa(tmp_path))
    bad = tmp_path / "bad" / "QA_information" / "Open-access"
    bad.mkdir(parents=True)
    (bad / "x.json").write_text(json.dumps([{"question": "q", "gt_answer": "zzz", "image_path": "Images/x/1.png",
                                             "option_A": "a", "option_B": "b", "modality_type": "X-Ray"}]))
    with pytest.raises(BenchmarkError, match="matches no option"):
        list(load_omnimedvqa(tmp_path / "bad"))
    (bad / "x.json").write_text("{not json")
    with pytest.raises(BenchmarkError, match="cannot read"):
        list(load_omnimedvqa(tmp_path / "bad"))
    with pytest.raises(BenchmarkError, match="split files"):
        list(load_omnimedvqa(root, "test", splits_dir=tmp_path))
    with pytest.raises(BenchmarkError, match="split must be"):
        list(load_omnimedvqa(root, "val"))

"""Every loader on its sample files (registered with each benchmark), and clear errors for broken directories."""

import json
import shutil
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medlvr.corpus.evalsets.base import BenchmarkError, open_image
from medlvr.corpus.evalsets.registry import all_benchmarks
from medlvr.corpus.evalsets.medxpertqa import load_medxpertqa
from medlvr.corpus.evalsets.mmmu import SUBJECTS, load_mmmu
from medlvr.corpus.evalsets.pmc_vqa import load_pmc_vqa, strip_choice
from medlvr.corpus.evalsets.slake import load_slake
from medlvr.corpus.evalsets.vqa_rad import load_vqa_rad
from medlvr.corpus.evalsets.registry import write_benchmark_samples

MINE = ["slake", "vqa_rad", "vqa_rad_osf", "pmc_vqa", "mmmu", "medxpertqa"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    counts = write_benchmark_samples(root, MINE)
    return root, counts


@pytest.fixture
def copy(data, tmp_path):
    def _copy(name):
        shutil.copytree(data[0] / name, tmp_path / name)
        return tmp_path / name
    return _copy


def _check(samples, count=None):
    assert samples and (count is None or len(samples) == count)
    assert len({s.sample_id for s in samples}) == len(samples)
    for s in samples:
        assert s.kind in ("mc", "yesno", "open")
        if s.kind == "mc":
            assert s.answer in dict(s.options)
        if s.kind == "yesno":
            assert s.answer in ("yes", "no")
        for uri in s.images:
            assert open_image(uri).size == (32, 32)


def test_registered():
    assert {"slake", "vqa_rad", "pmc_vqa", "mmmu_hm", "medxpertqa_mm"} <= set(all_benchmarks())


def test_sample_writer_is_deterministic(data, tmp_path):
    write_benchmark_samples(tmp_path, ["pmc_vqa", "medxpertqa", "vqa_rad"])
    for rel in ("pmc_vqa/test_clean.csv", "pmc_vqa/images_2.zip", "medxpertqa/images.zip", "medxpertqa/MM/test.jsonl"):
        assert (tmp_path / rel).read_bytes() == (data[0] / rel).read_bytes()
    with pytest.raises(BenchmarkError):
        write_benchmark_samples(tmp_path, ["nonexistent"])


def test_slake(data, copy):
    root, counts = data
    samples = list(load_slake(root / "slake"))
    _check(samples, counts["slake"])
    assert all(s.benchmark == "slake" and s.images[0].startswith("zip://") for s in samples)
    closed = [s for s in samples if s.tags["closed"]]
    assert [(s.sample_id, s.answer) for s in closed] == [("test-11", "yes"), ("test-12", "no"), ("test-21", "yes")]
    which = next(s for s in samples if s.sample_id == "test-22")  # CLOSED but not yes/no
    assert which.kind == "open" and which.tags["answer_type"] == "closed" and not which.tags["closed"]
    assert not any("肺" in s.question for s in samples)  # Chinese rows dropped
    # the zip extracted as imgs/ works too
    root2 = copy("slake")
    with zipfile.ZipFile(root2 / "imgs.zip") as zf:
        zf.extractall(root2)
    (root2 / "imgs.zip").unlink()
    again = list(load_slake(root2))
    assert [s.sample_id for s in again] == [s.sample_id for s in samples] and again[0].images[0].startswith("file:")


def test_slake_errors(copy, tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_slake(tmp_path / "nope")
    root = copy("slake")
    good = (root / "test.json").read_text(encoding="utf-8")
    (root / "test.json").write_text("[{bad json")
    with pytest.raises(BenchmarkError, match="not valid JSON"):
        load_slake(root)
    (root / "test.json").write_text(json.dumps([{"question": "q", "answer": "Yes"}]))
    with pytest.raises(BenchmarkError, match="lacks keys"):
        load_slake(root)
    with pytest.raises(BenchmarkError, match="validation.json"):
        load_slake(root, split="validation")
    (root / "test.json").write_text(good, encoding="utf-8")
    with zipfile.ZipFile(root / "imgs.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist() if "xmlab3/" not in n}
    with zipfile.ZipFile(root / "imgs.zip", "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(BenchmarkError, match="imgs/xmlab3/source.jpg of qid 31"):
        load_slake(root)
    (root / "imgs.zip").unlink()
    with pytest.raises(BenchmarkError, match="imgs.zip"):
        load_slake(root)


def test_vqa_rad_hf(data):
    root, counts = data
    samples = list(load_vqa_rad(root / "vqa_rad"))
    _check(samples, counts["vqa_rad"])
    assert [s.sample_id for s in samples[:2]] == ["test-0", "test-1"]
    assert [s.answer for s in samples if s.tags["closed"]] == ["no", "yes", "yes"]
    assert samples[0].images[0].startswith("parquet://") and samples[0].images[0].endswith("#row=0&col=image")
    assert len(list(load_vqa_rad(root / "vqa_rad", split="train"))) == 2


def test_vqa_rad_osf(data):
    root, counts = data
    samples = list(load_vqa_rad(root / "vqa_rad_osf"))
    _check(samples, counts["vqa_rad_osf"])
    assert all(s.tags["release"] == "osf" for s in samples)
    closed_not_yn = [s for s in samples if s.tags["answer_type"] == "closed" and not s.tags["closed"]]
    assert [(s.sample_id, s.answer, s.kind) for s in closed_not_yn] == [("qid-3", "Left", "open")]
    assert next(s for s in samples if s.sample_id == "qid-4").answer == "2"  # integer answer in the JSON
    assert [s.sample_id for s in load_vqa_rad(root / "vqa_rad_osf", split="train")] == ["qid-6", "qid-7"]


def test_vqa_rad_errors(copy):
    root = copy("vqa_rad")
    test_file = next((root / "data").glob("test-*.parquet"))
    pq.write_table(pq.read_table(test_file).drop(["answer"]), test_file)
    with pytest.raises(BenchmarkError, match=r"lacks columns \['answer'\]"):
        load_vqa_rad(root)
    test_file.unlink()
    with pytest.raises(BenchmarkError, match="test-00000-of-00001"):
        load_vqa_rad(root)
    with pytest.raises(BenchmarkError, match="Dataset Public.json"):
        load_vqa_rad(root, source="osf")
    osf = copy("vqa_rad_osf")
    (osf / "VQA_RAD Dataset Public.json").write_text("{")
    with pytest.raises(BenchmarkError, match="not valid JSON"):
        load_vqa_rad(osf)
    shutil.rmtree(osf / "VQA_RAD Image Folder")
    (osf / "VQA_RAD Dataset Public.json").write_text("[]")
    with pytest.raises(BenchmarkError, match="Image Folder"):
        load_vqa_rad(osf)


def test_pmc_vqa_v1_and_v2(data):
    root, counts = data
    v1 = list(load_pmc_vqa(root / "pmc_vqa"))
    _check(v1, counts["pmc_vqa"])
    assert v1[0].options == (("A", "Diffuse uptake"), ("B", "Focal uptake"), ("C", "No uptake"), ("D", "Rim uptake"))
    assert v1[2].options[1] == ("B", "A cyst") and v1[2].answer_text == "A cyst"
    assert v1[3].options[2] == ("C", "Left kidney") and v1[3].answer == "C"
    assert v1[0].sample_id == "test_clean-0" and v1[0].images[0].startswith("file:")
    v2 = list(load_pmc_vqa(root / "pmc_vqa", test_file="test_2.csv"))
    _check(v2, 3)
    assert v2[1].options[0] == ("A", "Left") and v2[1].tags["version"] == "v2"
    assert v2[0].images[0].startswith("zip://") and v2[0].images[0].endswith("#figures/PMC400_F1.jpg")
    assert strip_choice("B", " B:A cyst") == "A cyst" and strip_choice("C", "Cyst") == "Cyst"


def test_pmc_vqa_errors(copy):
    root = copy("pmc_vqa")
    with pytest.raises(BenchmarkError, match="test_file must be one of"):
        load_pmc_vqa(root, test_file="train.csv")
    text = (root / "test_clean.csv").read_text().replace("Answer_label", "Label")
    (root / "test_clean.csv").write_text(text)
    with pytest.raises(BenchmarkError, match=r"lacks columns \['Answer_label'\]"):
        load_pmc_vqa(root)
    (root / "images_2.zip").write_bytes(b"not a zip")
    with pytest.raises(BenchmarkError, match="not a valid zip"):
        load_pmc_vqa(root, test_file="test_2.csv")
    (root / "test_2.csv").unlink()
    with pytest.raises(BenchmarkError, match="test_2.csv"):
        load_pmc_vqa(root, test_file="test_2.csv")


def test_mmmu(data):
    root, counts = data
    samples = list(load_mmmu(root / "mmmu"))
    _check(samples, counts["mmmu"])
    assert {s.tags["subject"] for s in samples} == set(SUBJECTS)
    by_id = {s.sample_id: s for s in samples}
    two = by_id["validation_Clinical_Medicine_1"]
    assert [u.rsplit("col=", 1)[1] for u in two.images] == ["image_1", "image_2"]
    in_options = by_id["validation_Basic_Medical_Science_2"]  # <image 2>, <image 3> are the options
    assert [u.rsplit("col=", 1)[1] for u in in_options.images] == ["image_1", "image_2", "image_3"]
    assert in_options.options == (("A", "<image 2>"), ("B", "<image 3>"))
    assert open_image(two.images[0]).tobytes() != open_image(two.images[1]).tobytes()
    assert by_id["validation_Pharmacy_1"].kind == "open" and by_id["validation_Pharmacy_1"].answer == "4.5"
    assert len(by_id["validation_Public_Health_1"].images) == 1  # no placeholder: its non-null image
    assert [s.sample_id for s in load_mmmu(root / "mmmu", subjects=("Pharmacy",))] == ["validation_Pharmacy_1"]


def test_mmmu_errors(copy):
    root = copy("mmmu")
    with pytest.raises(BenchmarkError, match="not Health & Medicine"):
        load_mmmu(root, subjects=("Art",))
    path = root / "Pharmacy" / "validation-00000-of-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index("options"), "options", pa.array(["['unclosed"])), path)
    with pytest.raises(BenchmarkError, match="Python list literal"):
        load_mmmu(root)
    pq.write_table(table.drop(["question_type"]), path)
    with pytest.raises(BenchmarkError, match=r"lacks columns \['question_type'\]"):
        load_mmmu(root)
    path.unlink()
    with pytest.raises(BenchmarkError, match="validation-00000-of-00001.parquet"):
        load_mmmu(root)
    shutil.rmtree(root / "Public_Health")
    with pytest.raises(BenchmarkError, match="Public_Health"):
        load_mmmu(root)


def test_medxpertqa(data, copy):
    root, counts = data
    samples = list(load_medxpertqa(root / "medxpertqa"))
    _check(samples, counts["medxpertqa"])
    assert samples[0].sample_id == "MM-1" and len(samples[0].options) == 5
    assert "Answer Choices: (A)" in samples[0].question and samples[0].tags["options_in_question"]
    assert len(samples[1].images) == 2 and all(u.startswith("zip://") for u in samples[1].images)
    assert samples[1].tags["question_type"] == "Reasoning"
    assert [s.sample_id for s in load_medxpertqa(root / "medxpertqa", split="dev")] == ["MM-dev-1"]
    broken = copy("medxpertqa")
    lines = (broken / "MM" / "test.jsonl").read_text().splitlines()
    (broken / "MM" / "test.jsonl").write_text("\n".join(lines[:2] + ["{oops"]) + "\n")
    with pytest.raises(BenchmarkError, match="line 3 .* not valid JSON"):
        load_medxpertqa(broken)
    rec = json.loads(lines[0])
    del rec["label"]
    (broken / "MM" / "test.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(BenchmarkError, match=r"lacks keys \['label'\]"):
        load_medxpertqa(broken)
    (broken / "MM" / "test.jsonl").write_text(lines[0].replace("MM-1-a.jpeg", "MM-9-z.jpeg") + "\n")
    with pytest.raises(BenchmarkError, match="'MM-9-z.jpeg' of MM-1 not found"):
        load_medxpertqa(broken)
    (broken / "images.zip").unlink()
    with pytest.raises(BenchmarkError, match="images.zip"):
        load_medxpertqa(broken)
    (broken / "MM" / "test.jsonl").unlink()
    with pytest.raises(BenchmarkError, match="test.jsonl"):
        load_medxpertqa(broken)


def test_slake_detection_boxes_become_rois(tmp_path):
    from medlvr.corpus.evalsets.base import open_image
    from medlvr.corpus.evalsets.registry import get_benchmark
    from medlvr.corpus.evalsets.registry import write_benchmark_samples

    import numpy as np

    write_benchmark_samples(tmp_path, ["slake"])
    samples = list(get_benchmark("slake").loader(tmp_path / "slake"))
    assert samples and all(s.tags.get("rois") for s in samples)
    for s in samples:
        (x0, y0, x1, y1), = s.tags["rois"]
        img = np.asarray(open_image(s.images[0]).convert("L"))
        bright = np.argwhere(img > 150)  # the square the sample writer drew (JPEG: allow a pixel of ringing)
        assert abs(bright[:, 1].min() - x0) <= 1 and abs(bright[:, 1].max() + 1 - x1) <= 1
        assert abs(bright[:, 0].min() - y0) <= 1 and abs(bright[:, 0].max() + 1 - y1) <= 1
        assert len(s.tags["roi_labels"]) == 1 and s.tags["roi_labels"][0] in ("Lung", "Chest", "Abdomen", "Brain")

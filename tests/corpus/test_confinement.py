"""Issue 15 (3): nothing is read outside the data root. Every file a reader opens goes through
corpus.paths.confined / open_confined; an audit hook records Python's "open" events and the approvals
(`medlvr.confined`) to check it."""

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.evalsets.base import BenchmarkError
from medlvr.corpus.evalsets.medxpertqa import load_medxpertqa, write_medxpertqa
from medlvr.corpus.evalsets.omnimedvqa import load_omnimedvqa, write_omnimedvqa
from medlvr.corpus.evalsets.pmc_vqa import load_pmc_vqa, write_pmc_vqa
from medlvr.corpus.evalsets.vqa_rad import load_vqa_rad, write_osf
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.limits import record_limit
from medlvr.corpus.paths import AUDIT_EVENT, confined, open_confined, take_escapes, walk
from medlvr.corpus.records import RecordError
from medlvr.corpus.sample_data import write_samples

import pyarrow.parquet as pq

# ---------------------------------------------------------------- one audit hook for the whole session
# (an audit hook cannot be removed: it records only while a test has set _EVENTS to a list)
_EVENTS: list | None = None


def _hook(event, args):
    if _EVENTS is not None and event in ("open", AUDIT_EVENT) and isinstance(args[0], (str, bytes, os.PathLike)):
        _EVENTS.append((event, os.fsdecode(args[0])))


sys.addaudithook(_hook)


class Recorded:
    def __enter__(self):
        global _EVENTS
        _EVENTS = []
        self.events = _EVENTS
        return self

    def __exit__(self, *exc):
        global _EVENTS
        _EVENTS = None

    def opened_under(self, folder: Path) -> list[str]:
        real = os.path.realpath(folder) + os.sep
        return [p for e, p in self.events if e == "open" and os.path.realpath(os.path.abspath(p)).startswith(real)]

    def unapproved_under(self, folder: Path) -> list[str]:
        """Opens of existing files under `folder` that no `confined` call approved before them."""
        approved: set[str] = set()
        bad = []
        real = os.path.realpath(folder) + os.sep
        for event, p in self.events:
            full = os.path.realpath(os.path.abspath(p))
            if event == AUDIT_EVENT:
                approved.add(full)
            elif full.startswith(real) and os.path.isfile(full) and p not in approved and full not in approved:
                bad.append(p)
        return bad


def _ingest(dataset: str, root: Path, out: Path):
    s = ingest_dataset(load_catalog()[dataset], root, out, IngestConfig(patient_salt="t", workers=1))
    rejects = pq.read_table(out / dataset / "rejects.parquet").to_pylist()
    return s, rejects


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    data = tmp_path_factory.mktemp("samples")
    write_samples(data, list(load_catalog()), seed=0)
    return data


def test_every_reader_opens_only_what_the_confinement_approved(samples, tmp_path):
    """Ingest of every sample dataset under the audit hook: each file opened under a dataset root was approved
    by corpus.paths.confined first, and every approval lies inside that root."""
    problems = []
    for dataset in load_catalog():
        root = samples / dataset
        with Recorded() as rec:
            s, _ = _ingest(dataset, root, tmp_path / "out")
        assert s.records_out > 0, dataset
        assert rec.opened_under(root), f"{dataset}: no file opened?"
        problems += [f"{dataset}: {p}" for p in rec.unapproved_under(root)]
        real_root = os.path.realpath(root) + os.sep
        problems += [f"{dataset}: approved outside {p}" for e, p in rec.events
                     if e == AUDIT_EVENT and not p.startswith(real_root)]
    assert not problems, "\n".join(problems[:20])


# ---------------------------------------------------------------- a symlink out, for each annotation kind
# (dataset, annotation file relative to its root): before issue 15 the walked ones (VOC/LIDC XML, MSD dataset.json,
# TN3K folds, table globs) were read from outside the root and accepted
ANNOTATIONS = [
    ("bccd", "BCCD/Annotations/BloodImage_00000.xml"),  # VOC XML
    ("lidc_idri", "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-CT CHEST-30178/3000566.000000-NA-03192/069.xml"),
    ("rsna_pneumonia", "stage_2_train_labels.csv"),
    ("nih_bbox", "BBox_List_2017.csv"),
    ("msd_ct", "Task06_Lung/dataset.json"),
    ("tn3k", "tn3k/tn3k-trainval-fold0.json"),
    ("monuseg", "MoNuSeg 2018 Training Data/Annotations/TCGA-18-5592-01Z-00-DX1.xml"),  # Aperio XML
    ("livecell", "livecell_coco_train.json"),  # COCO
    ("chestx_det", "ChestX_Det_train.json"),
    ("vindr_cxr", "train.csv"),
    ("oct5k", "Detection/all_bounding_boxes.csv"),
    ("deeplesion", "DL_info.csv"),
    ("siim_acr", "train-rle.csv"),  # RLE table
    ("fastmri_plus", "Annotations/knee.csv"),
    ("ham10000", "HAM10000_metadata.csv"),
    ("ph2", "PH2Dataset/PH2_dataset.txt"),
    ("acdc", "database/testing/patient101/Info.cfg"),
    ("hc18", "training_set_pixel_size_and_HC.csv"),
    ("adam", "Training400/Fovea_location.xlsx"),
    ("nih_bbox", "train_val_list.txt"),  # official split list
]


@pytest.mark.parametrize("dataset,rel", ANNOTATIONS, ids=[f"{d}:{Path(r).name}" for d, r in ANNOTATIONS])
def test_annotation_file_symlinked_out_of_the_root_is_refused(samples, tmp_path, dataset, rel):
    root = tmp_path / "data" / dataset
    shutil.copytree(samples / dataset, root, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / Path(rel).name
    shutil.move(root / rel, target)  # the same bytes, now outside the root, linked back in
    os.symlink(target, root / rel)
    with Recorded() as rec:
        s, rejects = _ingest(dataset, root, tmp_path / "out")
    assert not rec.opened_under(outside), f"read outside the root: {rec.opened_under(outside)}"
    assert s.records_in == s.records_out + s.records_rejected
    hits = [r for r in rejects if "outside the dataset root" in r["reason"] and rel in r["reason"]]
    assert hits, [r["reason"] for r in rejects]
    assert str(tmp_path) not in json.dumps(rejects)


# ---------------------------------------------------------------- the confinement function itself

def _files(base: Path, texts: dict[str, str]) -> Path:
    for rel, text in texts.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)
    return base


def test_confined_resolves_every_level_and_checks_size(tmp_path):
    root = _files(tmp_path, {"ds/a/f.txt": "hello", "secret/f.txt": "secret"}) / "ds"
    assert confined(root, "a/f.txt") == Path(os.path.realpath(root / "a" / "f.txt"))
    assert confined(root, root / "a" / "f.txt") == confined(root, "a/f.txt")  # a joined Path or a relative str
    with open_confined(root, "a/f.txt", "r") as f:
        assert f.read() == "hello"
    for bad, why in [("../secret/f.txt", "escapes"), ("/etc/passwd", "absolute"), ("a/none.txt", "missing"),
                     ("a", "not a regular file")]:
        with pytest.raises(RecordError, match=why):
            confined(root, bad)
    with pytest.raises(RecordError, match="outside the dataset root"):
        confined(root, tmp_path / "secret" / "f.txt")
    # a folder swapped for a symlink after discovery cached its realpath: still refused when opened
    os.rename(root / "a", tmp_path / "old_a")
    os.symlink(tmp_path / "secret", root / "a")
    with pytest.raises(RecordError, match="outside the dataset root"):
        open_confined(root, "a/f.txt")
    with record_limit(3), pytest.raises(RecordError, match=r"f.txt: file is 5 bytes .*over the record limit of 3"):
        confined(tmp_path / "old_a", "f.txt")


def test_walk_yields_no_file_that_leaves_the_root(tmp_path):
    root = _files(tmp_path, {"ds/in/x.xml": "<a/>", "out/y.xml": "<a/>"}) / "ds"
    os.symlink(tmp_path / "out" / "y.xml", root / "in" / "y.xml")  # a file link out
    os.symlink(tmp_path / "out", root / "linked")  # a folder link out
    os.symlink(root / "in" / "x.xml", root / "in" / "z.xml")  # a link that stays inside: fine
    take_escapes()
    assert [p.relative_to(root).as_posix() for p in walk(root, "*/*.xml")] == ["in/x.xml", "in/z.xml"]
    assert take_escapes() == ["in/y.xml", "linked/y.xml"]
    assert take_escapes() == []


# ---------------------------------------------------------------- benchmark image references

def test_omnimedvqa_image_path_outside_the_root_is_refused(tmp_path):
    root = write_omnimedvqa(tmp_path / "omni", seed=0, per_modality=5, medr1_splits=False)
    (tmp_path / "secret.png").write_bytes((root / "Images").rglob("*.png").__next__().read_bytes())
    qa = root / "QA_information" / "Open-access" / "MIAS.json"
    records = json.loads(qa.read_text())
    for bad, why in [("../secret.png", "escapes the dataset root"), (str(tmp_path / "secret.png"), "absolute"),
                     ("Images/link.png", "resolves outside")]:
        if bad == "Images/link.png":
            os.symlink(tmp_path / "secret.png", root / bad)
        qa.write_text(json.dumps([dict(records[0], image_path=bad)] + records[1:]))
        with pytest.raises(BenchmarkError, match=f"OmniMedVQA: image_path .*{why}.*outside the benchmark root"):
            list(load_omnimedvqa(root, "all"))
        with pytest.raises(BenchmarkError, match=why):  # refused even when images are not checked
            list(load_omnimedvqa(root, "all", check_images=False))


def test_other_benchmarks_refuse_image_references_that_leave_the_root(tmp_path):
    root = tmp_path / "vqa_rad"
    root.mkdir()
    write_osf(root)
    js = root / "VQA_RAD Dataset Public.json"
    recs = json.loads(js.read_text())
    js.write_text(json.dumps([dict(recs[0], image_name="../../etc/passwd", phrase_type="test_freeform")] + recs[1:]))
    with pytest.raises(BenchmarkError, match="VQA-RAD: image_name '../../etc/passwd'.*escapes"):
        list(load_vqa_rad(root, "test", source="osf"))
    root = tmp_path / "pmc"
    root.mkdir()
    write_pmc_vqa(root)
    (tmp_path / "s.jpg").write_bytes(next((root / "images").iterdir()).read_bytes())
    victim = sorted((root / "images").iterdir())[0]
    victim.unlink()
    os.symlink(tmp_path / "s.jpg", victim)
    with pytest.raises(BenchmarkError, match=f"PMC-VQA: Figure_path '{victim.name}'.*resolves outside"):
        list(load_pmc_vqa(root))
    root = tmp_path / "mx"
    root.mkdir()
    write_medxpertqa(root)
    with zipfile.ZipFile(root / "images.zip") as zf:  # the images extracted, one of them a symlink out
        zf.extractall(root / "images")
    (root / "images.zip").unlink()
    first = sorted(p for p in (root / "images").rglob("MM-1-a.jpeg"))[0]
    shutil.move(first, tmp_path / "m.jpeg")
    os.symlink(tmp_path / "m.jpeg", first)
    with pytest.raises(BenchmarkError, match="MedXpertQA: image 'MM-1-a.jpeg' of MM-1 not found"):
        list(load_medxpertqa(root))

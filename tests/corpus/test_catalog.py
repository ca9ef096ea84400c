"""The catalog as data: the paper's 31 datasets over 8 modalities (more may be added), each with an adapter, a
sample writer, valid layout; a 32nd dataset is one catalog file plus one sample writer."""

from collections import Counter

import pytest

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.catalog import CATALOG_PATH_ENV, MODALITIES, CatalogError, load_catalog, parse_spec
from medlvr.corpus.sample_data import writers

# The paper's 31 datasets (docs/datasets.md) by modality; the catalog may hold more.
PAPER_DATASETS = {
    "CT": ("deeplesion", "kits23", "lidc_idri", "lits", "msd_ct"),
    "MRI": ("acdc", "brats2021", "fastmri_plus", "msd_prostate"),
    "X-ray": ("chestx_det", "nih_bbox", "rsna_pneumonia", "siim_acr", "vindr_cxr"),
    "ultrasound": ("busi", "camus", "hc18", "tn3k"),
    "dermoscopy": ("ham10000", "isic2018", "ph2"),
    "fundus": ("adam", "idrid", "refuge"),
    "OCT": ("aroi", "oct5k", "retouch"),
    "microscopy": ("bccd", "dsb2018", "livecell", "monuseg"),
}


def test_the_papers_31_datasets_are_present_over_eight_modalities():
    cat = load_catalog()
    assert sum(len(v) for v in PAPER_DATASETS.values()) == 31 and set(PAPER_DATASETS) == set(MODALITIES)
    for modality, ids in PAPER_DATASETS.items():
        for ds in ids:
            assert ds in cat and cat[ds].modality == modality, ds
    per_mod = Counter(s.modality for s in cat.values())
    assert set(per_mod) == set(MODALITIES)


def test_adapters_are_shared_not_copied():
    cat = load_catalog()
    used = {s.adapter for s in cat.values()}
    assert used <= set(ADAPTERS)
    assert 10 <= len(used) <= 16, used


def test_every_dataset_is_documented_and_mapped():
    for s in load_catalog().values():
        assert s.licence and s.citation and s.homepage.startswith("http"), s.id
        assert s.labels and all(v.startswith("kg:") for v in s.labels.values()), s.id
        assert s.layout, s.id


def test_every_dataset_has_a_sample_writer():
    assert set(writers()) == set(load_catalog())


def test_sample_layout_matches_catalog(tmp_path):
    from medlvr.corpus.sample_data import write_samples

    write_samples(tmp_path, None, seed=0)
    for s in load_catalog().values():
        root = tmp_path / s.id
        missing = [g for g in s.layout if next(iter(root.glob(g)), None) is None]
        assert not missing, f"{s.id}: layout globs match nothing in the sample: {missing}"


BASE = {"id": "x", "name": "X", "modality": "CT", "body_region": "r", "adapter": "a", "labels": {"l": "kg:l"},
        "layout": ["*"], "patient_key": {"source": "image"}, "licence": "l", "citation": "c", "homepage": "http://h"}


@pytest.mark.parametrize("change,msg", [
    ({"modality": "PET"}, "modality"),
    ({"id": "Bad-Id"}, "lowercase"),
    ({"labels": {}}, "non-empty"),
    ({"labels": {"l": "liver"}}, "kg:"),
    ({"patient_key": {"source": "guess"}}, "patient_key"),
    ({"official_split": {"source": "coin"}}, "official_split"),
    ({"options": {"volume_index": "first"}}, "volume_index must be an integer"),
    ({"options": {"variants": [{"name": "v", "volume_index": 1.5}]}}, "volume_index must be an integer"),
    ({"options": {"volume_index": 0, "axis_order": "XYZC"}}, "already reads the last axis as channels"),
    ({"options": {"channel": 2}}, "channel must be a channel name"),
    ({"ignored_label": {"x": "why"}}, r"unknown config key ignored_label \(did you mean ignored_labels\?\)"),
    ({"ignored_labels": ["x"]}, "ignored_labels must be a mapping"),
    ({"ignored_labels": {"x": ""}}, "ignored label 'x' needs a reason"),
    ({"ignored_labels": {"l": "why"}}, "label 'l' is both mapped and ignored"),
])
def test_malformed_entries_fail_loudly(change, msg):
    assert parse_spec({**BASE, "options": {"volume_index": -1, "axis_order": "XYZ", "channel": "T2"}})
    with pytest.raises(CatalogError, match=msg):
        parse_spec({**BASE, **change})
    bad = dict(BASE)
    del bad["licence"]
    with pytest.raises(CatalogError, match="missing keys"):
        parse_spec(bad)


TOY_YAML = """\
id: toy_lesions
name: Toy lesions (a 32nd dataset defined outside the package)
modality: ultrasound
body_region: breast
adapter: paired_masks
options:
  sets:
    - image_glob: "images/*.png"
      image_regex: '^images/(?P<case>case\\d+)\\.png$'
      masks: {lesion: "masks/{case}.png"}
  masks:
    lesion: {decoder: binary, label: lesion, missing: error, empty: reject, instances: true}
labels: {lesion: "kg:breast_lesion"}
layout: ["images/*.png", "masks/*.png"]
patient_key: {source: path_regex, pattern: '(case\\d+)'}
licence: CC0 (test data)
citation: "MedLVR test suite"
homepage: https://example.org/toy
"""


def test_a_32nd_dataset_is_one_catalog_file_and_one_sample_writer(tmp_path, monkeypatch):
    """Catalog file in a folder named by MEDLVR_CATALOG_PATH, writer registered here: written, ingested, boxes
    recovered exactly, with no edit anywhere else."""
    import numpy as np

    from medlvr.corpus import sample_data
    from medlvr.corpus.sample_data.synth import box, ellipse, gray8
    from tests.corpus.helpers import assert_truth_recovered, ingest_sample

    shipped = set(load_catalog())
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "toy_lesions.yaml").write_text(TOY_YAML)
    monkeypatch.setenv(CATALOG_PATH_ENV, str(tmp_path / "catalog"))
    monkeypatch.setattr(sample_data, "SAMPLE_WRITERS", dict(sample_data.SAMPLE_WRITERS))

    @sample_data.register_sample_writer("toy_lesions")
    def write_toy_lesions(root, rng):
        from PIL import Image

        truth = []
        for i, (cy, cx) in enumerate(((20, 30), (40, 50))):
            m = ellipse(64, 80, cy, cx, 8, 12)
            for folder, arr in (("images", gray8(64, 80, rng)), ("masks", (m * 255).astype(np.uint8))):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / folder / f"case{i}.png")
            truth.append({"source_path": f"images/case{i}.png", "suffix": None, "boxes": [["lesion", box(m)]]})
        return truth

    cat = load_catalog()
    assert set(cat) == shipped | {"toy_lesions"} and cat["toy_lesions"].adapter == "paired_masks"
    assert set(writers()) == set(cat)
    ing = ingest_sample(tmp_path, "toy_lesions")
    assert ing.summary.dataset == "toy_lesions"
    assert assert_truth_recovered(ing) == 2
    monkeypatch.delenv(CATALOG_PATH_ENV)
    assert "toy_lesions" not in load_catalog()


def test_a_missing_catalog_folder_or_a_duplicate_id_fails(tmp_path, monkeypatch):
    from medlvr.corpus.catalog import CATALOG_DIR

    monkeypatch.setenv(CATALOG_PATH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CatalogError, match="not a directory"):
        load_catalog()
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "busi.yaml").write_text((CATALOG_DIR / "busi.yaml").read_text())
    monkeypatch.setenv(CATALOG_PATH_ENV, str(tmp_path / "copy"))
    with pytest.raises(CatalogError, match="duplicate dataset id 'busi'"):
        load_catalog()

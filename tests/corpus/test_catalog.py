"""The catalog as data: 31 datasets over 8 modalities, each with an adapter, a sample writer, valid layout."""

from collections import Counter

import pytest

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.catalog import MODALITIES, CatalogError, load_catalog, parse_spec
from medlvr.corpus.sample_data import writers


def test_thirty_one_datasets_cover_eight_modalities():
    cat = load_catalog()
    assert len(cat) == 31
    per_mod = Counter(s.modality for s in cat.values())
    assert set(per_mod) == set(MODALITIES)
    assert all(3 <= n <= 5 for n in per_mod.values()), per_mod


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
])
def test_malformed_entries_fail_loudly(change, msg):
    assert parse_spec({**BASE, "options": {"volume_index": -1, "axis_order": "XYZ", "channel": "T2"}})
    with pytest.raises(CatalogError, match=msg):
        parse_spec({**BASE, **change})
    bad = dict(BASE)
    del bad["licence"]
    with pytest.raises(CatalogError, match="missing keys"):
        parse_spec(bad)

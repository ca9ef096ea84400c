"""The whole corpus graph materialised on the bundled sample data in an ephemeral instance."""

import base64
import io
import json
import re
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from PIL import Image
from dagster import serialize_value

from medlvr.corpus.catalog import load_catalog
from medlvr.pipelines.corpus.assets import CORPUS_ASSETS
from medlvr.pipelines.corpus.checks import CORPUS_CHECKS, objects_reconcile, shard_checksums_match_manifest
from medlvr.pipelines.corpus.metadata import CONTACT_SHEET_MAX_BYTES, MARKDOWN_MAX_CHARS, read_manifest
from medlvr.pipelines.corpus.resources import CorpusSettings, CorpusStorage, DatasetRoots, default_resources
from tests.catalog_count import N_DATASETS
from tests.pipelines.helpers import check_evaluations, materialize_corpus

HANDFUL = ["busi", "kits23", "lidc_idri", "vindr_cxr", "isic2018"]  # ultrasound, CT volume, DICOM+XML, X-ray, derm
ALL_CHECKS = {"boxes_inside_images", "objects_reconcile", "no_empty_images", "rejects_below_share", "no_patient_or_group_across_splits",
              "shard_checksums_match_manifest", "zero_decontamination_matches_left", "qa_pairs_schema",
              "qa_answer_among_options", "qa_boxes_inside_images"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLVR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDLVR_DATA_ROOT", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def handful_run(tmp_path_factory):
    """Defaults only (no data root, no storage URL): sample data and corpus go under the MedLVR home."""
    home = tmp_path_factory.mktemp("medlvr_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDLVR_HOME", str(home))
    mp.delenv("MEDLVR_DATA_ROOT", raising=False)
    instance = dg.DagsterInstance.ephemeral()
    resources = {**default_resources(), "dataset_roots": DatasetRoots(datasets=HANDFUL)}
    results = materialize_corpus(resources, HANDFUL, instance)
    yield home, instance, resources, results
    mp.undo()


def test_handful_materialises_with_passing_checks(handful_run):
    home, instance, _, results = handful_run
    assert all(r.success for r in results)
    evals = check_evaluations(results)
    assert {e.check_name for e in evals} == ALL_CHECKS
    assert all(e.passed for e in evals), [(e.check_name, e.metadata) for e in evals if not e.passed]
    # per-dataset checks ran once per partition
    assert sum(e.check_name == "boxes_inside_images" for e in evals) == len(HANDFUL)
    # defaults: sample data and corpus under the MedLVR home
    for ds in HANDFUL:
        assert (home / "sample_data" / ds).is_dir()
        assert (home / "corpus" / "ingest" / ds / "images.parquet").exists()
        assert (home / "corpus" / "qa" / ds / "pairs.parquet").exists()
        assert (home / "corpus" / "raw" / ds / "inventory.json").exists()
    out = home / "corpus"
    manifest = read_manifest(out / "shards")
    assert set(manifest["counts"]["dataset"]) == set(HANDFUL)
    assert manifest["rows"] == sum(pq.ParquetFile(out / "shards" / f["path"]).metadata.num_rows
                                   for f in manifest["shards"])
    assert (out / "card" / "README.md").exists() and (out / "card" / "samples.png").exists()
    assert json.loads((out / "work" / "datasets.json").read_text())["datasets"] == sorted(HANDFUL, key=HANDFUL.index)


def test_materialisation_metadata(handful_run):
    home, instance, _, _ = handful_run
    ev = instance.get_latest_materialization_event(dg.AssetKey("normalized_images"))
    meta = ev.asset_materialization.metadata
    # thumbnails are files on the corpus storage, linked: no image bytes in the event log
    thumbs = Path(meta["thumbnails"].value)
    assert isinstance(meta["thumbnails"], dg.PathMetadataValue) and thumbs.read_bytes().startswith(b"\x89PNG")
    assert thumbs == home / "corpus" / "previews" / HANDFUL[-1] / "images.png"
    assert meta["dagster/row_count"].value > 0
    assert "reject_reasons" in meta and "preview" in meta and "rejects_preview" in meta
    raw = instance.get_latest_materialization_event(dg.AssetKey("raw_dataset")).asset_materialization.metadata
    assert raw["files"].value > 0 and "layout_missing" in raw
    qa = instance.get_latest_materialization_event(dg.AssetKey("qa_pairs")).asset_materialization.metadata
    assert Path(qa["thumbnails"].value).read_bytes().startswith(b"\x89PNG")
    card = instance.get_latest_materialization_event(dg.AssetKey("corpus_card")).asset_materialization.metadata
    assert Path(card["samples"].value).read_bytes().startswith(b"\x89PNG")
    # what the UI renders inline: contact sheets (JPEG data: URLs within their cap) and the card's first sections
    for meta_, label in ((meta, "contact_sheet"), (qa, "contact_sheet"), (card, "sample_images")):
        m = re.fullmatch(r"!\[[^\]]*\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", meta_[label].value)
        jpeg = base64.b64decode(m.group(1))
        assert len(jpeg) <= CONTACT_SHEET_MAX_BYTES and Image.open(io.BytesIO(jpeg)).format == "JPEG"
    card_md = card["card"].value
    readme = (home / "corpus" / "card" / "README.md").read_text()
    assert isinstance(card["card"], dg.MarkdownMetadataValue) and len(card_md) <= MARKDOWN_MAX_CHARS
    assert card_md.startswith("# MedLVR grounding corpus") and "## Format" in card_md and "## Counts" in card_md
    assert not re.search(r"\]\((?!https?:|data:)[^)]*\)", card_md)  # no relative link (it would lead nowhere)
    assert all(line in readme for line in card_md.splitlines() if line.startswith("| "))  # whole rows only
    for key in ("normalized_images", "qa_pairs", "corpus_card"):  # small and bounded, whatever the images
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        # the stated caps (one contact sheet, one Markdown excerpt) plus the small tables and paths
        assert len(serialize_value(event.asset_materialization)) < 16_000 + CONTACT_SHEET_MAX_BYTES * 4 // 3 + \
            (MARKDOWN_MAX_CHARS if key == "corpus_card" else 0), key
    shards = instance.get_latest_materialization_event(dg.AssetKey("corpus_shards")).asset_materialization.metadata
    assert shards["dagster/row_count"].value > 0
    partitions = instance.get_materialized_partitions(dg.AssetKey("roi_annotations"))
    assert partitions == set(HANDFUL)


def test_tampered_shard_fails_checksum_check(handful_run):
    home, instance, resources, _ = handful_run
    manifest = read_manifest(home / "corpus" / "shards")
    shard = home / "corpus" / "shards" / manifest["shards"][0]["path"]
    original = shard.read_bytes()
    try:
        shard.write_bytes(original + b"x")
        r = dg.materialize([*CORPUS_ASSETS, *CORPUS_CHECKS],
                           selection=dg.AssetSelection.checks(shard_checksums_match_manifest),
                           resources=resources, instance=instance, raise_on_error=False)
        (ev,) = r.get_asset_check_evaluations()
        # appended bytes change the checksum and break the Parquet footer: both are reported, for that shard only
        assert not ev.passed and ev.metadata["failures"].value == 2
    finally:
        shard.write_bytes(original)


def test_doctored_partition_fails_object_reconciliation(handful_run):
    """A box deleted from one dataset's rois.parquet (an object now named by nothing) fails the blocking
    objects_reconcile check of that partition, with the count it found."""
    import pyarrow as pa

    home, instance, resources, _ = handful_run
    path = home / "corpus" / "ingest" / "kits23" / "rois.parquet"
    original = path.read_bytes()
    try:
        t = pq.read_table(path)
        last = t.column("source_object")[t.num_rows - 1].as_py()
        keep = pa.array([so != last for so in t.column("source_object").to_pylist()])
        pq.write_table(t.filter(keep), path)
        # the check with raw_dataset (an inventory of the raw folder: it does not rebuild the doctored table),
        # which gives the run its partitions
        r = dg.materialize([*CORPUS_ASSETS, *CORPUS_CHECKS], partition_key="kits23", resources=resources,
                           selection=dg.AssetSelection.assets("raw_dataset") | dg.AssetSelection.checks(objects_reconcile),
                           instance=instance, raise_on_error=False)
        (ev,) = r.get_asset_check_evaluations()
        assert not ev.passed and ev.metadata["failures"].value >= 1
        assert "objects_out" in ev.metadata["examples"].value
    finally:
        path.write_bytes(original)


def test_failing_blocking_check_stops_downstream(home):
    resources = {**default_resources(), "corpus_settings": CorpusSettings(max_reject_share=-1.0)}
    r = dg.materialize([*CORPUS_ASSETS, *CORPUS_CHECKS],
                       selection=dg.AssetSelection.assets("raw_dataset", "normalized_images", "roi_annotations",
                                                          "qa_pairs"),
                       partition_key="busi", resources=resources, instance=dg.DagsterInstance.ephemeral(),
                       raise_on_error=False)
    assert not r.success
    failed = [e for e in r.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["rejects_below_share"]
    assert dg.AssetKey("normalized_images") in {m.asset_key for m in r.get_asset_materialization_events()
                                                 for m in [m.event_specific_data.materialization]}
    assert not (home / "corpus" / "qa" / "busi").exists()  # qa_pairs did not run


def test_fsspec_storage_memory_url(tmp_path, home):
    """Corpus storage at memory://: everything lands in the fsspec filesystem, staged locally."""
    import fsspec

    url = f"memory://medlvr-test-{tmp_path.name}/corpus"
    ids = ["busi", "hc18"]
    resources = {**default_resources(), "dataset_roots": DatasetRoots(datasets=ids),
                 "storage": CorpusStorage(url=url, staging_dir=str(tmp_path / "stage"))}
    results = materialize_corpus(resources, ids, dg.DagsterInstance.ephemeral())
    assert all(r.success for r in results) and all(e.passed for e in check_evaluations(results))
    fs, root = fsspec.core.url_to_fs(url)
    for rel in ("ingest/busi/images.parquet", "qa/hc18/pairs.parquet", "work/splits.parquet",
                "card/README.md", "kg/stats.json", "ingest/.patient_salt"):
        assert fs.exists(f"{root}/{rel}"), rel
    manifest = json.loads(fs.cat_file(f"{root}/shards/_manifest.json"))
    assert all(fs.exists(f"{root}/shards/{f['path']}") for f in manifest["shards"])
    assert not (home / "corpus").exists()  # nothing written to the local default location


@pytest.mark.slow
def test_full_catalog(tmp_path):
    ids = list(load_catalog())
    assert len(ids) == N_DATASETS
    resources = {**default_resources(), "dataset_roots": DatasetRoots(data_root=str(tmp_path / "data")),
                 "storage": CorpusStorage(url=str(tmp_path / "corpus"))}
    from medlvr.corpus.sample_data import write_samples

    write_samples(tmp_path / "data")
    results = materialize_corpus(resources, ids, dg.DagsterInstance.ephemeral())
    assert all(r.success for r in results)
    evals = check_evaluations(results)
    assert all(e.passed for e in evals), [(e.check_name, e.metadata) for e in evals if not e.passed]
    manifest = read_manifest(tmp_path / "corpus" / "shards")
    assert set(manifest["counts"]["dataset"]) == set(ids)

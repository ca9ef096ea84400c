"""build-corpus end to end on a few sample datasets: shards, manifest, splits, determinism, atomic publish."""

import json
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from medlvr.corpus import build as build_mod
from medlvr.corpus.build import BuildConfig, build_corpus
from medlvr.corpus.card import RENDER_FUNCTION, card_markdown
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.config import ConfigError, build_config, config_to_dict, load_config
from medlvr.corpus.qa.questions import QUESTION_TYPES
from medlvr.corpus.sample_data import write_samples
from medlvr.corpus.shards import verify_manifest

IDS = ["kits23", "busi", "vindr_cxr", "refuge", "monuseg", "deeplesion"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("b")
    write_samples(root / "data", IDS)
    report = build_corpus(root / "data", root / "out", BuildConfig(), IDS, progress=False, log=lambda *_: None)
    return root, report


def _rows(out: Path) -> list[dict]:
    return pads.dataset(out / "shards", format="parquet", exclude_invalid_files=True).to_table(
        columns=["qa_id", "image_id", "dataset", "split", "question_type", "boxes", "width", "height", "patient_key",
                 "dup_group", "answer", "options", "answer_index", "concept_ids", "question"]).to_pylist()


def test_shards_match_manifest_and_content_is_valid(built):
    root, report = built
    out = root / "out"
    assert verify_manifest(out / "shards") == []
    manifest = json.loads((out / "shards" / "_manifest.json").read_text())
    rows = _rows(out)
    assert manifest["rows"] == len(rows) == sum(report["qa"].values()) > 100
    assert set(manifest["counts"]["dataset"]) == set(IDS)
    assert sum(manifest["counts"]["split"].values()) == len(rows)
    for r in rows:
        assert r["question_type"] in QUESTION_TYPES
        for b in r["boxes"] or []:
            assert 0 <= b[0] < b[2] <= r["width"] and 0 <= b[1] < b[3] <= r["height"], r
        if r["options"]:
            assert len(r["options"]) == 4 and r["options"][r["answer_index"]] == r["answer"]
        assert r["question"].count("{box") <= len(r["boxes"] or [])
    assert len({r["qa_id"] for r in rows}) == len(rows)


def test_no_patient_or_duplicate_group_in_two_splits(built):
    root, _ = built
    seen_p, seen_g = {}, {}
    for r in _rows(root / "out"):
        assert seen_p.setdefault((r["dataset"], r["patient_key"]), r["split"]) == r["split"]
        assert seen_g.setdefault(r["dup_group"], r["split"]) == r["split"]


def test_shard_folder_loads_with_huggingface_datasets(built, tmp_path):
    """`load_dataset(shard_folder)`: the card's YAML gives the splits and decodes images, no casting by the user."""
    from datasets import Image, load_dataset

    root, _ = built
    shards = root / "out" / "shards"
    manifest = json.loads((shards / "_manifest.json").read_text())
    ds = load_dataset(str(shards), cache_dir=str(tmp_path / "hf_cache"))
    # Hugging Face names: the split folders and the shards' split column say `validation`, the image column `image`
    assert {split: len(d) for split, d in ds.items()} == manifest["counts"]["split"]
    assert set(manifest["counts"]["split"]) == {"train", "validation", "test"}
    assert sorted(p.name for p in shards.iterdir() if p.is_dir()) == ["test", "train", "validation"]
    assert set(ds["validation"]["split"]) == {"validation"}
    assert isinstance(ds["train"].features["image"], Image) and "image_png" not in ds["train"].column_names
    row = ds["train"][0]
    assert row["image"].size == (row["width"], row["height"])  # a decoded PIL image, the normalised size
    assert {"question", "answer", "boxes", "options", "answer_index"} <= set(ds["train"].column_names)


def test_rebuild_is_byte_identical_and_reuses_generation_cache(built, tmp_path):
    root, _ = built
    out2 = tmp_path / "out2"
    shutil.copytree(root / "out", out2)  # a rebuild in place: same output folder, so the same patient-key salt
    build_corpus(root / "data", out2, BuildConfig(), IDS, progress=False, log=lambda *_: None)
    m1 = json.loads((root / "out" / "shards" / "_manifest.json").read_text())
    m2 = json.loads((out2 / "shards" / "_manifest.json").read_text())
    assert [f["sha256"] for f in m1["shards"]] == [f["sha256"] for f in m2["shards"]]
    assert m1 == m2


def test_card_is_a_dataset_card_with_counts_format_and_plots(built):
    root, report = built
    card = Path(report["card"])
    text = card.read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "other" and "visual-question-answering" in header["task_categories"]
    assert header["configs"][0]["data_files"] == [{"split": d, "path": f"{d}/*.parquet"}
                                                  for d in ("train", "validation", "test")]
    assert {"name": "image", "dtype": "image"} in header["dataset_info"]["features"]
    assert "```json" not in text  # counts as tables, not raw dumps
    assert "| split | pairs | % |" in text
    assert len(text.splitlines()) < 300
    assert "question–answer pairs" in text and "![samples](samples.png)" in text
    # the {boxN} placeholders stay in the shards; the card says what they mean and names the function rendering them
    assert "`{box0}` is `boxes[0]`" in text and f"`{RENDER_FUNCTION}(row, min_pixels, max_pixels)`" in text
    module, name = RENDER_FUNCTION.rsplit(".", 1)
    render = getattr(__import__(module, fromlist=[name]), name)
    row = next(r for r in pq.read_table(root / "out" / "shards" / "train").to_pylist() if "{box0}" in r["question"])
    question, _ = render(row, 56 * 56, 28 * 28 * 1280)
    assert "{box" not in question and "[" in question  # rendered as coordinates
    shards = root / "out" / "shards"
    assert (shards / "README.md").read_text() == text  # the shard folder carries the same card, with its plots
    for png in ("counts.png", "box_sizes.png", "samples.png"):
        assert (card.parent / png).stat().st_size > 1000
        assert (shards / png).read_bytes() == (card.parent / png).read_bytes()


def test_card_from_the_sample_data_says_it_is_synthetic_and_lists_no_licence(built):
    """Built from `write_samples` folders (each carries the sample marker): the card says it is the synthetic
    sample and lists no source licence or citation, since no data of those datasets was read."""
    root, report = built
    text = Path(report["card"]).read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license_name"] == "medlvr-synthetic-sample" and "synthetic" in header["tags"]
    intro = text.split("## ", 1)[0]
    assert "synthetic sample" in intro and "No data of a public medical imaging dataset is in it" in intro
    assert "public medical imaging datasets" not in intro.replace("No data of a public medical imaging dataset", "")
    assert "## Source datasets, licences and citations" not in text
    catalog = load_catalog()
    for ds_id in IDS:
        assert f"| `{ds_id}` | {catalog[ds_id].name} |" in text  # listed as a synthetic stand-in
        assert catalog[ds_id].citation.replace("|", "\\|") not in text
    for ds_id in set(catalog) - set(IDS):  # datasets not built are not listed at all
        assert f"`{ds_id}`" not in text
    manifest = json.loads((root / "out" / "shards" / "_manifest.json").read_text())
    assert manifest["synthetic_sample_datasets"] == sorted(IDS)
    # a build that read real busi data (no marker) next to the samples: busi's licence and citation, the rest not
    mixed = card_markdown({**manifest, "synthetic_sample_datasets": sorted(set(IDS) - {"busi"})})
    busi = catalog["busi"]
    assert "from 1 public medical imaging datasets and the bundled **synthetic sample** stand-ins for 5 more" in mixed
    assert busi.licence in mixed and busi.citation.replace("|", "\\|") in mixed
    assert catalog["kits23"].citation.replace("|", "\\|") not in mixed
    assert yaml.safe_load(mixed.split("---\n")[1])["license_name"] == "source-dataset-licences"


def test_sample_writer_marks_its_folders_and_ingest_records_it(built, tmp_path):
    from medlvr.corpus.provenance import SAMPLE_MARKER

    root, _ = built
    for ds_id in IDS:
        marker = json.loads((root / "data" / ds_id / SAMPLE_MARKER).read_text())
        assert marker["dataset"] == ds_id and marker["synthetic"] is True
        summary = json.loads((root / "out" / "ingest" / ds_id / "summary.json").read_text())
        assert summary["synthetic_sample"] is True
    # the same files without the marker: real data as far as the build can tell
    real = tmp_path / "real"
    shutil.copytree(root / "data" / "busi", real / "busi")
    (real / "busi" / SAMPLE_MARKER).unlink()
    from medlvr.corpus.ingest import IngestConfig, ingest_dataset

    s = ingest_dataset(load_catalog()["busi"], real / "busi", tmp_path / "ing", IngestConfig(workers=1))
    assert s.synthetic_sample is False and s.records_out > 0


def test_decontamination_removes_benchmark_images(built, tmp_path):
    root, _ = built
    img = pq.read_table(root / "out" / "ingest" / "busi" / "images.parquet", columns=["image_id", "png"]).to_pylist()[0]
    bench = tmp_path / "slake" / "imgs" / "xmlab1"
    bench.mkdir(parents=True)
    (bench / "source.png").write_bytes(img["png"])
    out = tmp_path / "out3"
    shutil.copytree(root / "out", out)
    cfg = BuildConfig(benchmark_roots={"SLAKE": str(tmp_path / "slake")})
    rep = build_mod.decontaminate(out, cfg)
    assert rep["removed_images"] >= 1 and rep["matched"]["SLAKE"] >= 1
    build_mod.write_shards(out, cfg, IDS)
    assert img["image_id"] not in {r["image_id"] for r in _rows(out)}


def test_failed_publish_keeps_previous_shards(built, tmp_path, monkeypatch):
    root, _ = built
    out = tmp_path / "out4"
    shutil.copytree(root / "out", out)
    before = (out / "shards" / "_manifest.json").read_text()

    def boom(self, row):
        raise RuntimeError("disk full")

    monkeypatch.setattr("medlvr.corpus.shards.ShardWriter.add", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_mod.write_shards(out, BuildConfig(), IDS)
    assert (out / "shards" / "_manifest.json").read_text() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".shards.tmp")]


def test_config_round_trip_and_unknown_keys(tmp_path):
    (tmp_path / "b.yaml").write_text("caption_rate: 0.5\nqa: {max_pairs_per_image: 4}\ningest: {workers: 2}\n")
    cfg = load_config(BuildConfig, tmp_path / "b.yaml", ["generator.backend=openai", "ingest.normalise.max_side=64"])
    assert cfg.caption_rate == 0.5 and cfg.qa.max_pairs_per_image == 4 and cfg.ingest.workers == 2
    assert cfg.generator.backend == "openai" and cfg.ingest.normalise.max_side == 64
    assert build_config(BuildConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key captoin_rate"):
        build_config(BuildConfig, {"captoin_rate": 1})
    # unknown keys are errors at every depth (IngestConfig used to drop them silently)
    with pytest.raises(ConfigError, match="unknown config key ingest.wokers"):
        build_config(BuildConfig, {"ingest": {"wokers": 2}})
    with pytest.raises(ConfigError, match="generator.backnd"):
        build_config(BuildConfig, {"generator": {"backnd": "openai"}})
    with pytest.raises(ConfigError, match="generator: backend must be one of"):
        build_config(BuildConfig, {"generator": {"backend": "gpt"}})


def test_step_table_paths_and_build_outputs(built):
    """The table is the one definition: every path a step writes exists after build_corpus, and the report file
    equals what build_corpus returned (minus its wall time and the messages of skipped datasets)."""
    root, report = built
    out = root / "out"
    assert list(build_mod.STEPS) == ["ingest", "qa_pairs", "dedup", "decontaminate", "splits", "shards", "card"]
    for step in build_mod.STEPS.values():
        for ds in (IDS if step.per_dataset else [None]):
            for rel in step.push_paths(ds):
                assert (out / rel).exists(), (step.name, rel)
    with pytest.raises(ValueError, match="name the dataset"):
        build_mod.STEPS["ingest"].push_paths()
    published = json.loads((out / "work" / "datasets.json").read_text())
    assert sorted(published["datasets"]) == sorted(IDS) and published["not_built"] == []
    on_disk = json.loads((out / "build_report.json").read_text())
    assert on_disk == {k: v for k, v in report.items() if k not in ("seconds", "missing", "failed")}
    assert report["qa"] == {ds: json.loads((out / "qa" / ds / "stats.json").read_text())["pairs"] for ds in IDS}


def test_iter_grouped_streams_in_order_and_rejects_disorder(tmp_path):
    import pyarrow as pa

    from medlvr.corpus.build import iter_grouped

    pq.write_table(pa.table({"image_id": ["a", "b", "c"], "w": [1, 2, 3]}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"image_id": ["a", "a", "c"], "v": [1, 2, 3]}), tmp_path / "c.parquet")
    got = [(r["image_id"], [c["v"] for c in g]) for r, g in
           iter_grouped(tmp_path / "p.parquet", tmp_path / "c.parquet", ["image_id", "w"], ["image_id", "v"], batch_size=1)]
    assert got == [("a", [1, 2]), ("b", []), ("c", [3])]
    pq.write_table(pa.table({"image_id": ["c", "a"], "v": [1, 2]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="not in"):
        list(iter_grouped(tmp_path / "p.parquet", tmp_path / "bad.parquet", ["image_id"], ["image_id", "v"]))


def test_corrupt_shard_is_reported_not_raised(built, tmp_path):
    root, _ = built
    out = tmp_path / "out5"
    shutil.copytree(root / "out" / "shards", out)
    victim = sorted(out.rglob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    problems = verify_manifest(out)
    rel = victim.relative_to(out).as_posix()
    assert f"checksum mismatch {rel}" in problems and any(p.startswith(f"unreadable shard {rel}") for p in problems)

"""The corpus as Dagster assets. Each body runs one step of the library's step table (`medlvr.corpus.build.STEPS`:
the same functions, in the same order, as `medlvr build-corpus`), staging exactly the step's `reads` and `writes`
from/to the corpus storage. Outputs are Parquet and JSON files in the corpus storage, never pickled return values;
downstream assets declare `deps` and read files (pyarrow), so nothing is loaded whole into memory by Dagster.

    corpus_ingest   raw_dataset[ds] -> normalized_images[ds] + roi_annotations[ds]   (step ingest)
    corpus_qa       knowledge_graph, qa_pairs[ds]                                    (step qa_pairs)
    corpus_publish  dedup_groups -> decontamination, splits -> corpus_shards -> corpus_card  (steps dedup ... card)

Staleness is Dagster's own: every asset has a `code_version` (a hash of the corpus library and this package, see
`medlvr.pipelines.code_version`), and `raw_dataset` records the raw folder's fingerprint as its data version, so
a changed raw file, a code change or a new upstream data version marks exactly the dependent assets stale.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from medlvr.corpus import layout
from medlvr.corpus.build import STEPS, BuildContext, write_json
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import DatasetMissing, check_layout, discover
from medlvr.pipelines.code_version import folder_fingerprint, package_code_version
from medlvr.pipelines.corpus import metadata as md
from medlvr.pipelines.corpus.partitions import DATASET_PARTITIONS
from medlvr.pipelines.corpus.resources import CorpusSettings, CorpusStorage, DatasetRoots, KnowledgeGraphResource

# I/O-bound steps (file systems, object stores) are retried with exponential backoff.
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
INGEST, QA, PUBLISH = "corpus_ingest", "corpus_qa", "corpus_publish"
# the code every corpus asset runs: editing it makes the assets stale
CODE_VERSION = package_code_version("medlvr.corpus", "medlvr.pipelines.corpus")


def _where(storage: CorpusStorage, rel: str) -> dg.MetadataValue:
    loc = storage.location().rstrip("/") + "/" + rel
    return dg.MetadataValue.url(loc) if storage.remote else dg.MetadataValue.path(loc)


def _grid_png(items: list) -> bytes | None:
    return md.thumbnail_grid(items) if items else None


def _preview(storage: CorpusStorage, rel: str, png: bytes | None) -> dg.MetadataValue:
    """Write a thumbnail PNG to the storage at `rel` and link it (metadata.py: never embedded in the event)."""
    if png is None:
        return dg.MetadataValue.text("no image with boxes")
    with storage.workdir(push_paths=[rel]) as out:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # atomic: a reader never sees half a PNG
        tmp.write_bytes(png)
        tmp.replace(path)
    return _where(storage, rel)


@contextlib.contextmanager
def run_step(name: str, storage: CorpusStorage, settings: CorpusSettings, dataset: str | None = None,
             datasets: list[str] | None = None, dataset_roots: DatasetRoots | None = None,
             kg=None) -> Iterator[tuple[dict, Path]]:
    """Run step `name` of the table in the storage's work folder: pull its reads, run it, push its writes after
    the with-block (which reads the outputs for metadata). Yields (the step's report, the local corpus folder)."""
    step = STEPS[name]
    with storage.workdir(pull_paths=step.pull_paths(dataset), push_paths=step.push_paths(dataset)) as out:
        ctx = BuildContext(out, settings.build_config(), list(datasets or ([dataset] if dataset else [])),
                           raw_root=dataset_roots.root if dataset_roots is not None else None, _kg=kg)
        yield step.run(ctx, dataset), out


# ---------------------------------------------------------------------------------------------- corpus_ingest
@dg.asset(partitions_def=DATASET_PARTITIONS, group_name=INGEST, kinds={"files"}, retry_policy=IO_RETRY,
          code_version=CODE_VERSION,
          description="A raw dataset in its native layout: files discovered and validated against the catalog "
                      "layout (no copy). Writes raw/DATASET/inventory.json; its data version is the folder's "
                      "fingerprint (paths, sizes, modification times), so a changed raw file makes the dataset's "
                      "downstream assets stale.")
def raw_dataset(context: dg.AssetExecutionContext, dataset_roots: DatasetRoots,
                storage: CorpusStorage) -> dg.MaterializeResult:
    ds = context.partition_key
    spec, root = load_catalog()[ds], dataset_roots.root(ds)
    if not root.is_dir():
        raise DatasetMissing(f"{ds}: no dataset folder at {root} (set data_root, overrides or MEDLVR_ROOT_{ds.upper()})")
    version = folder_fingerprint(root)
    files = [p for p in root.rglob("*") if p.is_file()]
    missing = check_layout(spec, root)
    refs, rejects = discover(spec, root)
    inv = {"dataset": ds, "root": str(root), "files": len(files), "bytes": sum(p.stat().st_size for p in files),
           "records": len(refs), "discover_rejects": len(rejects), "layout_missing": missing,
           "sample_data": dataset_roots.uses_samples}
    with storage.workdir(push_paths=[layout.raw(ds)]) as out:
        write_json(inv, out / layout.inventory(ds))
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "root": dg.MetadataValue.path(str(root)), "files": inv["files"], "bytes": inv["bytes"],
        "records": len(refs), "discover_rejects": len(rejects),
        "layout_missing": dg.MetadataValue.json({"globs": missing}), "sample_data": dataset_roots.uses_samples,
        "reject_preview": md.md_table([{"path": r.source_path, "stage": r.stage, "reason": r.reason}
                                       for r in rejects[:5]])})


@dg.multi_asset(
    specs=[
        dg.AssetSpec("normalized_images", deps=["raw_dataset"], group_name=INGEST, kinds={"parquet"},
                     code_version=CODE_VERSION,
                     description="Normalised 2-D images (PNG bytes inline) of one dataset: ingest/DATASET/images.parquet "
                                 "+ rejects.parquet + summary.json (step ingest of corpus.build.STEPS)."),
        dg.AssetSpec("roi_annotations", deps=["raw_dataset"], group_name=INGEST, kinds={"parquet"},
                     code_version=CODE_VERSION,
                     description="Regions of interest with boxes in the normalised images and KG concept ids: "
                                 "ingest/DATASET/rois.parquet (written by the same ingest step)."),
    ],
    partitions_def=DATASET_PARTITIONS, retry_policy=IO_RETRY, name="ingest_dataset")
def ingest_dataset_assets(context: dg.AssetExecutionContext, dataset_roots: DatasetRoots, storage: CorpusStorage,
                          corpus_settings: CorpusSettings):
    ds = context.partition_key
    with run_step("ingest", storage, corpus_settings, ds, dataset_roots=dataset_roots) as (s, out):
        images_meta = {
            "dagster/row_count": s["images_out"], "records_in": s["records_in"],
            "records_rejected": s["records_rejected"], "images_rejected": s["images_rejected"],
            "reject_share": round(s["records_rejected"] / max(1, s["records_in"]), 4),
            "reject_reasons": md.counts_table(s["reasons"], "reason"),
            "rejects_preview": md.md_table(md.head(out / layout.rejects(ds), ["level", "stage", "reason",
                                                                              "source_path"])),
            "preview": md.md_table(md.head(out / layout.images(ds), ["image_id", "source_path", "suffix", "width",
                                                                     "height", "intensity", "official_split"])),
            "path": _where(storage, layout.images(ds)), "seconds": s["seconds"]}
        items = md.ingest_items(out / layout.ingest(ds))
        rois_meta = {
            "dagster/row_count": s["rois_out"], "rois_rejected": s["rois_rejected"],
            # object accounting (docs/datasets.md): the objects_reconcile check verifies these against the tables
            **{k: s.get(k, 0) for k in ("objects_in", "objects_out", "objects_rejected", "objects_lost")},
            "object_outcomes": md.counts_table(dict(list(s.get("object_outcomes", {}).items())[:20]), "outcome"),
            "preview": md.md_table(md.head(out / layout.rois(ds), ["image_id", "label", "concept_id", "box",
                                                                   "origin", "source_object"])),
            "path": _where(storage, layout.rois(ds))}
    images_meta["thumbnails"] = _preview(storage, layout.preview(ds, "images"), _grid_png(items))
    images_meta["contact_sheet"] = md.md_image(md.contact_sheet(items), f"{ds}: images with their ROI boxes")
    yield dg.MaterializeResult(asset_key="normalized_images", metadata=images_meta)
    yield dg.MaterializeResult(asset_key="roi_annotations", metadata=rois_meta)


# ---------------------------------------------------------------------------------------------- corpus_qa
@dg.asset(group_name=QA, kinds={"networkx"}, code_version=CODE_VERSION,
          description="The medical knowledge graph (curated concepts + SLAKE import) that QA distractors and "
                      "facts come from; writes kg/stats.json.")
def knowledge_graph(kg: KnowledgeGraphResource, storage: CorpusStorage) -> dg.MaterializeResult:
    stats = kg.stats()
    with storage.workdir(push_paths=[layout.KG_STATS]) as out:
        write_json(stats, out / layout.KG_STATS)
    return dg.MaterializeResult(metadata={
        "nodes": stats["nodes"], "edges": stats["edges"], "curated_concepts": stats["concepts"],
        "types": md.counts_table(stats["types"], "type"), "relations": md.counts_table(stats["relations"], "relation"),
        "path": _where(storage, layout.KG_STATS)})


@dg.asset(partitions_def=DATASET_PARTITIONS, group_name=QA, kinds={"parquet"}, code_version=CODE_VERSION,
          deps=["normalized_images", "roi_annotations", knowledge_graph],
          description="Question-answer-box pairs of one dataset (12 question types, KG distractors, verified "
                      "VLM text): qa/DATASET/pairs.parquet + stats.json (step qa_pairs of corpus.build.STEPS).")
def qa_pairs(context: dg.AssetExecutionContext, storage: CorpusStorage, kg: KnowledgeGraphResource,
             corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    ds = context.partition_key
    with run_step("qa_pairs", storage, corpus_settings, ds, kg=kg.load()) as (stats, out):
        p = out / layout.pairs(ds)
        meta = {"dagster/row_count": stats["pairs"], "question_types": md.counts_table(stats["question_types"], "type"),
                "generation": dg.MetadataValue.json(stats["generation"]),
                "backend": corpus_settings.build_config().generator.backend,
                "preview": md.md_table(md.head(p, ["question_type", "question", "answer", "boxes"])),
                "path": _where(storage, layout.pairs(ds))}
        items = md.qa_items(p, out / layout.images(ds))
    meta["thumbnails"] = _preview(storage, layout.preview(ds, "qa_pairs"), _grid_png(items))
    meta["contact_sheet"] = md.md_image(md.contact_sheet(items), f"{ds}: grounding questions' boxes")
    return dg.MaterializeResult(metadata=meta)


# ---------------------------------------------------------------------------------------------- corpus_publish
@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=["normalized_images", qa_pairs], retry_policy=IO_RETRY,
          code_version=CODE_VERSION,
          description="Perceptual hashes and exact/near duplicate groups over every published dataset "
                      "(work/hashes.parquet, work/dup_groups.parquet). Fixes the dataset set of this publish "
                      "(work/datasets.json): the selected datasets whose ingest and QA outputs exist.")
def dedup_groups(storage: CorpusStorage, dataset_roots: DatasetRoots,
                 corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    try:
        with run_step("dedup", storage, corpus_settings, datasets=dataset_roots.selected()) as (rep, _):
            pass
    except FileNotFoundError as e:
        raise dg.Failure(f"{e}: materialise qa_pairs partitions first") from None
    return dg.MaterializeResult(metadata={
        "datasets": len(rep["datasets"]), "not_built": dg.MetadataValue.json(rep["not_built"]),
        "dagster/row_count": rep["images"],
        **{k: v for k, v in rep.items() if k not in ("images", "datasets", "not_built")},
        "path": _where(storage, layout.DUP_GROUPS)})


@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=[dedup_groups], retry_policy=IO_RETRY,
          code_version=CODE_VERSION,
          description="Corpus images matching a local benchmark image (perceptual hash): "
                      "work/contaminated.parquet + decontamination.json; removed from the shards.")
def decontamination(storage: CorpusStorage, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    with run_step("decontaminate", storage, corpus_settings) as (rep, _):
        pass
    return dg.MaterializeResult(metadata={
        "removed_images": rep["removed_images"], "benchmarks": dg.MetadataValue.json(rep["benchmarks_configured"]),
        "report": dg.MetadataValue.json(rep), "path": _where(storage, layout.CONTAMINATED)})


@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=[dedup_groups], retry_policy=IO_RETRY,
          code_version=CODE_VERSION,
          description="Patient- and duplicate-group-disjoint train/validation/test splits: work/splits.parquet + "
                      "splits.json.")
def splits(storage: CorpusStorage, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    with run_step("splits", storage, corpus_settings) as (rep, _):
        pass
    return dg.MaterializeResult(metadata={
        "dagster/row_count": rep["images"], "per_split": md.counts_table(rep["per_split"], "split", "images"),
        "components": rep["components"], "moved_official": rep["moved"],
        "fractions": dg.MetadataValue.json(rep["fractions"]), "path": _where(storage, layout.SPLITS)})


@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=[qa_pairs, splits, decontamination], retry_policy=IO_RETRY,
          code_version=CODE_VERSION,
          description="Training shards: shards/<split>/part-*.parquet with image bytes inline, plus "
                      "shards/_manifest.json (row counts, sha256 per shard, build reports). Published atomically.")
def corpus_shards(storage: CorpusStorage, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    with run_step("shards", storage, corpus_settings) as (rep, _):
        shard_dir = Path(rep["shards"])
        man = md.read_manifest(shard_dir)
        manifest_rel = f"{layout.SHARDS}/{md.manifest_path(shard_dir).name}"
    return dg.MaterializeResult(metadata={
        "dagster/row_count": man["rows"], "per_split": md.counts_table(man["counts"]["split"], "split", "pairs"),
        "per_dataset": md.counts_table(man["counts"]["dataset"], "dataset", "pairs"),
        "shards": md.md_table([{k: f[k] for k in ("path", "rows", "bytes", "sha256")} for f in man["shards"]], 70),
        "manifest": _where(storage, manifest_rel)})


@dg.asset(group_name=PUBLISH, kinds={"markdown"}, deps=[corpus_shards], retry_policy=IO_RETRY,
          code_version=CODE_VERSION,
          description="The corpus card: card/README.md with counts, box sizes and sample images (corpus.card), "
                      "and build_report.json (every step's report, as `medlvr build-corpus` writes it). The "
                      "metadata shows the card's first sections and its sample images.")
def corpus_card(storage: CorpusStorage, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    with run_step("card", storage, corpus_settings) as (rep, out):
        text = Path(rep["card"]).read_text()
        samples = md.sample_sheet(out / layout.CARD / "samples.png")
    where = storage.location().rstrip("/") + "/" + layout.CARD_README
    return dg.MaterializeResult(metadata={
        "card": dg.MetadataValue.md(md.markdown_excerpt(text, md.MARKDOWN_MAX_CHARS, where=where)),
        "card_path": _where(storage, layout.CARD_README), "lines": len(text.splitlines()),
        "sample_images": md.md_image(samples, "one sample image per dataset, with its boxes"),
        "samples": _where(storage, f"{layout.CARD}/samples.png"),
        "counts": _where(storage, f"{layout.CARD}/counts.png"),
        "build_report": _where(storage, layout.BUILD_REPORT)})


CORPUS_ASSETS = [raw_dataset, ingest_dataset_assets, knowledge_graph, qa_pairs, dedup_groups, decontamination,
                 splits, corpus_shards, corpus_card]

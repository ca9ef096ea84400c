"""The corpus as Dagster assets. Each body is a thin call into `corpus/` (the plain library); outputs are Parquet
and JSON files in the corpus storage, never pickled return values. Downstream assets declare `deps` and read
files (pyarrow), so nothing is loaded whole into a step's memory by Dagster.

    corpus_ingest   raw_dataset[ds] -> normalized_images[ds] + roi_annotations[ds]   (one ingest call)
    corpus_qa       knowledge_graph, qa_pairs[ds]
    corpus_publish  dedup_groups -> decontamination, splits -> corpus_shards (+ manifest) -> corpus_card
"""


import json
import os
from pathlib import Path

import dagster as dg

from medlvr.pipelines.corpus import metadata as md
from medlvr.pipelines.corpus.partitions import DATASET_PARTITIONS
from medlvr.pipelines.corpus.resources import CorpusSettings, CorpusStorage, DatasetRoots, KnowledgeGraphResource, QAGenerator

# I/O-bound steps (file systems, object stores) are retried with exponential backoff.
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
INGEST, QA, PUBLISH = "corpus_ingest", "corpus_qa", "corpus_publish"


def _write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


def _where(storage: CorpusStorage, rel: str) -> dg.MetadataValue:
    loc = storage.location().rstrip("/") + "/" + rel
    return dg.MetadataValue.url(loc) if storage.remote else dg.MetadataValue.path(loc)


def publish_datasets(out: Path) -> list[str]:
    return json.loads((out / "work" / "datasets.json").read_text())["datasets"]


# ---------------------------------------------------------------------------------------------- corpus_ingest
@dg.asset(partitions_def=DATASET_PARTITIONS, group_name=INGEST, kinds={"files"}, retry_policy=IO_RETRY,
          description="A raw dataset in its native layout: files discovered and validated against the catalog "
                      "layout (no copy). Writes raw/DATASET/inventory.json.")
def raw_dataset(context: dg.AssetExecutionContext, dataset_roots: DatasetRoots,
                storage: CorpusStorage) -> dg.MaterializeResult:
    from medlvr.corpus.catalog import load_catalog
    from medlvr.corpus.ingest import DatasetMissing, check_layout, discover

    ds = context.partition_key
    spec, root = load_catalog()[ds], dataset_roots.root(ds)
    if not root.is_dir():
        raise DatasetMissing(f"{ds}: no dataset folder at {root} (set data_root, overrides or MEDLVR_ROOT_{ds.upper()})")
    files = [p for p in root.rglob("*") if p.is_file()]
    missing = check_layout(spec, root)
    refs, rejects = discover(spec, root)
    inv = {"dataset": ds, "root": str(root), "files": len(files), "bytes": sum(p.stat().st_size for p in files),
           "records": len(refs), "discover_rejects": len(rejects), "layout_missing": missing,
           "sample_data": dataset_roots.uses_samples}
    with storage.workdir(push_paths=[f"raw/{ds}"]) as out:
        _write_json(inv, out / "raw" / ds / "inventory.json")
    return dg.MaterializeResult(metadata={
        "root": dg.MetadataValue.path(str(root)), "files": inv["files"], "bytes": inv["bytes"],
        "records": len(refs), "discover_rejects": len(rejects),
        "layout_missing": dg.MetadataValue.json({"globs": missing}), "sample_data": dataset_roots.uses_samples,
        "reject_preview": md.md_table([{"path": r.source_path, "stage": r.stage, "reason": r.reason}
                                       for r in rejects[:5]])})


@dg.multi_asset(
    specs=[
        dg.AssetSpec("normalized_images", deps=["raw_dataset"], group_name=INGEST, kinds={"parquet"},
                     description="Normalised 2-D images (PNG bytes inline) of one dataset: ingest/DATASET/images.parquet "
                                 "+ rejects.parquet + summary.json (corpus.ingest.ingest_dataset)."),
        dg.AssetSpec("roi_annotations", deps=["raw_dataset"], group_name=INGEST, kinds={"parquet"},
                     description="Regions of interest with boxes in the normalised images and KG concept ids: "
                                 "ingest/DATASET/rois.parquet (written by the same ingest call)."),
    ],
    partitions_def=DATASET_PARTITIONS, retry_policy=IO_RETRY, name="ingest_dataset")
def ingest_dataset_assets(context: dg.AssetExecutionContext, dataset_roots: DatasetRoots, storage: CorpusStorage,
                          corpus_settings: CorpusSettings):
    from medlvr.corpus.catalog import load_catalog
    from medlvr.corpus.ingest import ingest_dataset

    ds = context.partition_key
    spec, root = load_catalog()[ds], dataset_roots.root(ds)
    with storage.workdir(pull_paths=["ingest/.patient_salt"],
                         push_paths=[f"ingest/{ds}", "ingest/.patient_salt"]) as out:
        s = ingest_dataset(spec, root, out / "ingest", corpus_settings.build_config().ingest)
        d = out / "ingest" / ds
        images_meta = {
            "dagster/row_count": s.images_out, "records_in": s.records_in, "records_rejected": s.records_rejected,
            "images_rejected": s.images_rejected, "reject_share": round(s.records_rejected / max(1, s.records_in), 4),
            "reject_reasons": md.counts_table(s.reasons, "reason"),
            "rejects_preview": md.md_table(md.head(d / "rejects.parquet", ["level", "stage", "reason", "source_path"])),
            "preview": md.md_table(md.head(d / "images.parquet", ["image_id", "source_path", "suffix", "width",
                                                                 "height", "intensity", "official_split"])),
            "thumbnails": md.ingest_thumbnails(d), "path": _where(storage, f"ingest/{ds}/images.parquet"),
            "seconds": s.seconds}
        rois_meta = {
            "dagster/row_count": s.rois_out, "rois_rejected": s.rois_rejected,
            "preview": md.md_table(md.head(d / "rois.parquet", ["image_id", "label", "concept_id", "box", "origin"])),
            "path": _where(storage, f"ingest/{ds}/rois.parquet")}
    yield dg.MaterializeResult(asset_key="normalized_images", metadata=images_meta)
    yield dg.MaterializeResult(asset_key="roi_annotations", metadata=rois_meta)


# ---------------------------------------------------------------------------------------------- corpus_qa
@dg.asset(group_name=QA, kinds={"networkx"},
          description="The medical knowledge graph (curated concepts + SLAKE import) that QA distractors and "
                      "facts come from; writes kg/stats.json.")
def knowledge_graph(kg: KnowledgeGraphResource, storage: CorpusStorage) -> dg.MaterializeResult:
    stats = kg.stats()
    with storage.workdir(push_paths=["kg"]) as out:
        _write_json(stats, out / "kg" / "stats.json")
    return dg.MaterializeResult(metadata={
        "nodes": stats["nodes"], "edges": stats["edges"], "curated_concepts": stats["concepts"],
        "types": md.counts_table(stats["types"], "type"), "relations": md.counts_table(stats["relations"], "relation"),
        "path": _where(storage, "kg/stats.json")})


@dg.asset(partitions_def=DATASET_PARTITIONS, group_name=QA, kinds={"parquet"},
          deps=["normalized_images", "roi_annotations", knowledge_graph],
          description="Question-answer-box pairs of one dataset (12 question types, KG distractors, verified "
                      "VLM text): qa/DATASET/pairs.parquet + stats.json (corpus.build.build_qa_dataset).")
def qa_pairs(context: dg.AssetExecutionContext, storage: CorpusStorage, kg: KnowledgeGraphResource,
             qa_generator: QAGenerator, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    from medlvr.corpus.build import build_qa_dataset

    ds = context.partition_key
    with storage.workdir(pull_paths=[f"ingest/{ds}"], push_paths=[f"qa/{ds}"]) as out:
        stats = build_qa_dataset(ds, out, corpus_settings.build_config(qa_generator), kg.load())
        p = out / "qa" / ds / "pairs.parquet"
        meta = {"dagster/row_count": stats["pairs"], "question_types": md.counts_table(stats["question_types"], "type"),
                "generation": dg.MetadataValue.json(stats["generation"]), "backend": qa_generator.backend,
                "preview": md.md_table(md.head(p, ["question_type", "question", "answer", "boxes"])),
                "thumbnails": md.qa_thumbnails(p, out / "ingest" / ds / "images.parquet"),
                "path": _where(storage, f"qa/{ds}/pairs.parquet")}
    return dg.MaterializeResult(metadata=meta)


# ---------------------------------------------------------------------------------------------- corpus_publish
@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=["normalized_images", qa_pairs], retry_policy=IO_RETRY,
          description="Perceptual hashes and exact/near duplicate groups over every published dataset "
                      "(work/hashes.parquet, work/dup_groups.parquet). Fixes the dataset set of this publish "
                      "(work/datasets.json): the selected datasets whose ingest and QA outputs exist.")
def dedup_groups(storage: CorpusStorage, dataset_roots: DatasetRoots,
                 corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    from medlvr.corpus.build import compute_dup_groups, compute_hashes

    with storage.workdir(pull_paths=["ingest", "qa"], push_paths=["work"]) as out:
        sel = dataset_roots.selected()
        ids = [d for d in sel if (out / "ingest" / d / "images.parquet").exists()
               and (out / "qa" / d / "pairs.parquet").exists()]
        if not ids:
            raise dg.Failure("no dataset has ingest and QA outputs yet: materialise qa_pairs partitions first")
        _write_json({"datasets": ids, "not_built": sorted(set(sel) - set(ids))}, out / "work" / "datasets.json")
        compute_hashes(out, ids)
        rep = compute_dup_groups(out, corpus_settings.build_config())
    return dg.MaterializeResult(metadata={
        "datasets": len(ids), "not_built": dg.MetadataValue.json(sorted(set(sel) - set(ids))),
        "dagster/row_count": rep["images"], **{k: v for k, v in rep.items() if k != "images"},
        "path": _where(storage, "work/dup_groups.parquet")})


@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=[dedup_groups], retry_policy=IO_RETRY,
          description="Corpus images matching a local benchmark image (perceptual hash): "
                      "work/contaminated.parquet + decontamination.json; removed from the shards.")
def decontamination(storage: CorpusStorage, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    from medlvr.corpus.build import decontaminate

    with storage.workdir(pull_paths=["work/hashes.parquet"],
                         push_paths=["work/contaminated.parquet", "work/decontamination.json"]) as out:
        rep = decontaminate(out, corpus_settings.build_config())
    return dg.MaterializeResult(metadata={
        "removed_images": rep["removed_images"], "benchmarks": dg.MetadataValue.json(rep["benchmarks_configured"]),
        "report": dg.MetadataValue.json(rep), "path": _where(storage, "work/contaminated.parquet")})


@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=[dedup_groups], retry_policy=IO_RETRY,
          description="Patient- and duplicate-group-disjoint train/val/test splits: work/splits.parquet + splits.json.")
def splits(storage: CorpusStorage, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    from medlvr.corpus.build import compute_splits

    with storage.workdir(pull_paths=["ingest", "work/datasets.json", "work/dup_groups.parquet"],
                         push_paths=["work/splits.parquet", "work/splits.json"]) as out:
        rep = compute_splits(out, corpus_settings.build_config(), publish_datasets(out))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": rep["images"], "per_split": md.counts_table(rep["per_split"], "split", "images"),
        "components": rep["components"], "moved_official": rep["moved"],
        "fractions": dg.MetadataValue.json(rep["fractions"]), "path": _where(storage, "work/splits.parquet")})


@dg.asset(group_name=PUBLISH, kinds={"parquet"}, deps=[qa_pairs, splits, decontamination], retry_policy=IO_RETRY,
          description="Training shards: shards/<split>/part-*.parquet with image bytes inline, plus "
                      "shards/_manifest.json (row counts, sha256 per shard, build reports). Published atomically.")
def corpus_shards(storage: CorpusStorage, corpus_settings: CorpusSettings) -> dg.MaterializeResult:
    from medlvr.corpus.build import write_shards

    with storage.workdir(pull_paths=["ingest", "qa", "work"], push_paths=["shards"]) as out:
        shard_dir = write_shards(out, corpus_settings.build_config(), publish_datasets(out))
        man = md.read_manifest(shard_dir)
        manifest_rel = f"shards/{md.manifest_path(shard_dir).name}"
    return dg.MaterializeResult(metadata={
        "dagster/row_count": man["rows"], "per_split": md.counts_table(man["counts"]["split"], "split", "pairs"),
        "per_dataset": md.counts_table(man["counts"]["dataset"], "dataset", "pairs"),
        "shards": md.md_table([{k: f[k] for k in ("path", "rows", "bytes", "sha256")} for f in man["shards"]], 70),
        "manifest": _where(storage, manifest_rel)})


@dg.asset(group_name=PUBLISH, kinds={"markdown"}, deps=[corpus_shards], retry_policy=IO_RETRY,
          description="The corpus card: card/README.md with counts, box sizes and sample images (corpus.card).")
def corpus_card(storage: CorpusStorage) -> dg.MaterializeResult:
    from medlvr.corpus.card import write_card

    with storage.workdir(pull_paths=["shards"], push_paths=["card"]) as out:
        readme = write_card(out / "shards", out / "card")
        samples = (out / "card" / "samples.png").read_bytes()
        counts = (out / "card" / "counts.png").read_bytes()
        lines = len(readme.read_text().splitlines())
    return dg.MaterializeResult(metadata={
        "card": _where(storage, "card/README.md"), "lines": lines, "samples": md.png_markdown(samples, "samples"),
        "counts": md.png_markdown(counts, "counts")})


CORPUS_ASSETS = [raw_dataset, ingest_dataset_assets, knowledge_graph, qa_pairs, dedup_groups, decontamination,
                 splits, corpus_shards, corpus_card]

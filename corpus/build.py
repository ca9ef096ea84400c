"""The grounding-corpus build as separate steps (the CLI runs them in order; Dagster runs each as an asset).

    ingest        per dataset  -> <out>/ingest/<id>/{images,rois,rejects}.parquet      (corpus.ingest)
    qa_pairs      per dataset  -> <out>/qa/<id>/pairs.parquet + stats.json             (questions + verified VLM text)
    hashes        all          -> <out>/work/hashes.parquet                            (perceptual hashes)
    dedup_groups  all          -> <out>/work/dup_groups.parquet                        (exact + near duplicates)
    decontaminate all          -> <out>/work/contaminated.parquet + decontamination.json
    splits        all          -> <out>/work/splits.parquet + splits.json              (patient/group disjoint)
    shards        all          -> <out>/shards/<split>/part-*.parquet + _manifest.json
    card          all          -> <out>/card/README.md + PNG plots

Every step streams Parquet in batches; only ids, hashes and boxes are held in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from medlvr.corpus.ingest import IngestConfig
from medlvr.corpus.qa.questions import ImageFacts, QAConfig, RoiFact, build_pairs
from medlvr.corpus.qa.text import TextStage
from medlvr.corpus.tables import parquet_options


@dataclass(frozen=True)
class BuildConfig:
    ingest: IngestConfig = IngestConfig()
    qa: QAConfig = QAConfig()
    generator: Mapping[str, Any] = field(default_factory=dict)  # corpus.qa.generation.GeneratorConfig fields
    caption_rate: float = 0.25  # share of images whose largest ROI gets a VLM region description
    paraphrase_rate: float = 0.25  # share of questions the VLM rewords (answer locked)
    gen_batch_images: int = 32
    dup_radius: int = 4
    overlap_radius: int = 8
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    benchmark_roots: Mapping[str, str] = field(default_factory=dict)  # benchmark name -> local folder
    decontam_radius: int = 4
    row_group_mb: int = 128
    shard_rows: int = 200_000

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "BuildConfig":
        d = dict(d or {})
        kw: dict[str, Any] = {}
        if "ingest" in d:
            kw["ingest"] = IngestConfig.from_dict(d.pop("ingest"))
        if "qa" in d:
            kw["qa"] = QAConfig(**d.pop("qa"))
        if "split_fractions" in d:
            kw["split_fractions"] = tuple(d.pop("split_fractions"))
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown build config keys {sorted(unknown)}")
        return cls(**kw, **d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "BuildConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PAIRS_SCHEMA = pa.schema([
    ("qa_id", pa.string()), ("image_id", pa.string()), ("dataset", pa.string()), ("modality", pa.string()),
    ("question_type", pa.string()), ("question", pa.string()), ("answer", pa.string()),
    ("options", pa.list_(pa.string())), ("answer_index", pa.int32()), ("boxes", pa.list_(pa.list_(pa.float64()))),
    ("answer_is_box", pa.bool_()), ("concept_ids", pa.list_(pa.string())), ("knowledge_only", pa.bool_()),
    ("caption", pa.string()), ("text_source", pa.string()),
])


def _write_table(rows_or_table, schema: pa.Schema, path: Path) -> None:
    """Atomic single-file write: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table = rows_or_table if isinstance(rows_or_table, pa.Table) else pa.Table.from_pylist(rows_or_table, schema=schema)
    pq.write_table(table, tmp, **parquet_options(schema))
    tmp.replace(path)


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


def iter_grouped(parent: Path, child: Path, parent_cols: list[str], child_cols: list[str], key: str = "image_id",
                 batch_size: int = 256) -> Iterator[tuple[dict, list[dict]]]:
    """Stream (parent row, its child rows) from two Parquet files written in the same parent order (the ingest
    runner writes an image's ROIs right after it; QA pairs are written per image in image order). Memory holds
    one batch of each, whatever the file sizes. Raises if the child file is not in parent order."""
    children = (r for b in pq.ParquetFile(child).iter_batches(columns=child_cols, batch_size=batch_size * 8)
                for r in b.to_pylist())
    pending = next(children, None)
    for batch in pq.ParquetFile(parent).iter_batches(columns=parent_cols, batch_size=batch_size):
        for row in batch.to_pylist():
            group = []
            while pending is not None and pending[key] == row[key]:
                group.append(pending)
                pending = next(children, None)
            yield row, group
    if pending is not None:
        raise ValueError(f"{child} has rows for {pending[key]!r} that are not in {parent}'s order")


def _mm_per_px(row: dict) -> tuple[float, float] | None:
    sp = row["spacing_mm"]
    if not sp or len(sp) < 2:
        return None
    return (sp[-2] / row["scale_y"], sp[-1] / row["scale_x"])


def build_qa_dataset(dataset: str, out: Path, cfg: BuildConfig, kg, text: TextStage | None = None) -> dict[str, Any]:
    """QA pairs of one ingested dataset -> <out>/qa/<dataset>/pairs.parquet (streamed, atomic). Returns stats."""
    from medlvr.corpus.catalog import load_catalog

    spec = load_catalog()[dataset]
    text = text or TextStage(cfg, kg, out)
    before = Counter(text.stats)
    concepts = tuple(sorted(set(spec.labels.values())))
    counts: Counter = Counter()
    ing = out / "ingest" / dataset
    path = out / "qa" / dataset / "pairs.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = pq.ParquetWriter(tmp, PAIRS_SCHEMA, **parquet_options(PAIRS_SCHEMA))
    try:
        items: list = []
        groups = iter_grouped(ing / "images.parquet", ing / "rois.parquet",
                              ["image_id", "modality", "width", "height", "spacing_mm", "scale_x", "scale_y", "png"],
                              ["image_id", "label", "concept_id", "box", "instance", "area_mm2"])
        for row, rois in groups:
            facts = ImageFacts(row["image_id"], dataset, row["modality"], row["width"], row["height"],
                               tuple(RoiFact(r["label"], r["concept_id"], tuple(r["box"]), r["instance"], r["area_mm2"])
                                     for r in rois), _mm_per_px(row), concepts)
            items.append((row, facts, build_pairs(facts, kg, cfg.qa)))
            if len(items) >= cfg.gen_batch_images:
                _flush_pairs(items, dataset, text, writer, counts)
                items = []
        _flush_pairs(items, dataset, text, writer, counts)
        writer.close()
        tmp.replace(path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    stats = {"pairs": sum(counts.values()), "question_types": dict(sorted(counts.items())),
             "generation": {k: v - before.get(k, 0) for k, v in sorted(text.stats.items()) if v - before.get(k, 0)}}
    _write_json(stats, out / "qa" / dataset / "stats.json")
    return stats


def _flush_pairs(items, dataset: str, text: TextStage, writer, counts: Counter) -> None:
    if not items:
        return
    text.run(items)  # verified captions and paraphrases for this batch of images
    rows = []
    for row, _, pairs in items:
        for p in pairs:
            counts[p.question_type] += 1
            rows.append({
                "qa_id": p.qa_id, "image_id": p.image_id, "dataset": dataset, "modality": row["modality"],
                "question_type": p.question_type, "question": p.paraphrased or p.question, "answer": p.answer,
                "options": p.options or None, "answer_index": p.answer_index, "boxes": p.boxes or None,
                "answer_is_box": p.answer_is_box, "concept_ids": p.concept_ids, "knowledge_only": p.knowledge_only,
                "caption": p.caption, "text_source": text.model_id if (p.caption or p.paraphrased) else "template"})
    if rows:
        writer.write_table(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA))


def compute_hashes(out: Path, datasets: list[str]) -> Path:
    from medlvr.corpus.dedup import iter_image_hashes

    rows = [{"image_id": i, "dataset": d, "phash": h} for i, d, h in iter_image_hashes(out / "ingest", datasets)]
    schema = pa.schema([("image_id", pa.string()), ("dataset", pa.string()), ("phash", pa.uint64())])
    _write_table(rows, schema, out / "work" / "hashes.parquet")
    return out / "work" / "hashes.parquet"


def _hash_rows(out: Path):
    t = pq.read_table(out / "work" / "hashes.parquet")
    return zip(t.column("image_id").to_pylist(), t.column("dataset").to_pylist(), t.column("phash").to_pylist())


def compute_dup_groups(out: Path, cfg: BuildConfig) -> dict[str, Any]:
    from medlvr.corpus.dedup import duplicate_groups, group_sizes

    groups = duplicate_groups(_hash_rows(out), cfg.dup_radius, cfg.overlap_radius)
    schema = pa.schema([("image_id", pa.string()), ("dup_group", pa.string())])
    _write_table([{"image_id": k, "dup_group": v} for k, v in sorted(groups.items())], schema,
                 out / "work" / "dup_groups.parquet")
    sizes = group_sizes(groups)
    report = {"images": len(groups), "groups_with_duplicates": len(sizes),
              "images_in_duplicate_groups": sum(sizes.values()), "largest_group": max(sizes.values(), default=1)}
    _write_json(report, out / "work" / "dedup.json")
    return report


def _groups(out: Path) -> dict[str, str]:
    t = pq.read_table(out / "work" / "dup_groups.parquet")
    return dict(zip(t.column("image_id").to_pylist(), t.column("dup_group").to_pylist()))


def decontaminate(out: Path, cfg: BuildConfig) -> dict[str, Any]:
    from medlvr.corpus.decontam import DecontamReport, find_contaminated, scan_benchmark_images

    rep = DecontamReport()
    roots = {k: Path(v) for k, v in cfg.benchmark_roots.items()}
    matches = find_contaminated(((i, h) for i, _, h in _hash_rows(out)), scan_benchmark_images(roots, rep),
                                cfg.decontam_radius, rep) if roots else []
    schema = pa.schema([("image_id", pa.string()), ("benchmark", pa.string()), ("ref", pa.string()),
                        ("distance", pa.int32())])
    _write_table([dataclasses.asdict(m) for m in matches], schema, out / "work" / "contaminated.parquet")
    report = {**rep.to_dict(), "removed_images": len({m.image_id for m in matches}),
              "benchmarks_configured": sorted(roots)}
    _write_json(report, out / "work" / "decontamination.json")
    return report


def compute_splits(out: Path, cfg: BuildConfig, datasets: list[str]) -> dict[str, Any]:
    from medlvr.corpus.splits import assign_splits, iter_split_rows

    split_of, rep = assign_splits(iter_split_rows(out / "ingest", _groups(out), datasets), cfg.split_fractions,
                                  cfg.split_seed)
    schema = pa.schema([("image_id", pa.string()), ("split", pa.string())])
    _write_table([{"image_id": k, "split": v} for k, v in sorted(split_of.items())], schema,
                 out / "work" / "splits.parquet")
    report = rep.to_dict()
    _write_json(report, out / "work" / "splits.json")
    return report


def write_shards(out: Path, cfg: BuildConfig, datasets: list[str]) -> Path:
    """Join QA pairs with image bytes, split and duplicate group; drop contaminated images; publish atomically."""
    from medlvr.corpus.shards import ShardWriter

    splits = dict(zip(*[pq.read_table(out / "work" / "splits.parquet").column(c).to_pylist()
                        for c in ("image_id", "split")]))
    groups = _groups(out)
    bad = set(pq.read_table(out / "work" / "contaminated.parquet").column("image_id").to_pylist())
    extra = {"config_fingerprint": cfg.fingerprint(),
             "dedup": json.loads((out / "work" / "dedup.json").read_text()),
             "splits": json.loads((out / "work" / "splits.json").read_text()),
             "decontamination": json.loads((out / "work" / "decontamination.json").read_text()),
             "generation": {}}
    writer = ShardWriter(out, cfg.row_group_mb * 2**20, cfg.shard_rows)
    try:
        for ds in sorted(datasets):
            stats = json.loads((out / "qa" / ds / "stats.json").read_text())
            for k, v in stats["generation"].items():
                extra["generation"][k] = extra["generation"].get(k, 0) + v
            cols = ["image_id", "width", "height", "patient_key", "png"]
            for img, pairs in iter_grouped(out / "ingest" / ds / "images.parquet", out / "qa" / ds / "pairs.parquet",
                                           cols, PAIRS_SCHEMA.names, batch_size=64):
                if img["image_id"] in bad:
                    continue
                for r in pairs:
                    writer.add({**r, "split": splits[img["image_id"]], "patient_key": img["patient_key"],
                                "dup_group": groups.get(img["image_id"], img["image_id"]),
                                "width": img["width"], "height": img["height"], "image_png": img["png"]})
        return writer.commit(extra)
    except BaseException:
        writer.abort()
        raise


def build_corpus(data_root: Path, out: Path, cfg: BuildConfig = BuildConfig(), datasets: list[str] | None = None,
                 progress: bool = True, log=print) -> dict[str, Any]:
    """All steps in order. Returns the build report (also written to <out>/build_report.json)."""
    from medlvr.corpus.card import write_card
    from medlvr.corpus.ingest import run_ingest
    from medlvr.corpus.kg.graph import load_graph

    out = Path(out)
    t0 = time.perf_counter()
    log("[1/7] ingest")
    summaries, missing = run_ingest(Path(data_root), out / "ingest", datasets, cfg.ingest, progress=progress)
    if not summaries:
        raise FileNotFoundError(f"no dataset found under {data_root}: {missing}")
    ids = sorted(s.dataset for s in summaries)
    report: dict[str, Any] = {"config_fingerprint": cfg.fingerprint(), "skipped": missing,
                              "ingest": {s.dataset: {"records": s.records_in, "rejected": s.records_rejected,
                                                     "images": s.images_out, "rois": s.rois_out} for s in summaries}}
    log("[2/7] question-answer-box pairs")
    kg = load_graph()
    text = TextStage(cfg, kg, out)
    report["qa"] = {ds: build_qa_dataset(ds, out, cfg, kg, text)["pairs"] for ds in ids}
    log("[3/7] perceptual hashes and duplicate groups")
    compute_hashes(out, ids)
    report["dedup"] = compute_dup_groups(out, cfg)
    log("[4/7] decontamination against local benchmarks")
    report["decontamination"] = decontaminate(out, cfg)
    log("[5/7] patient- and duplicate-disjoint splits")
    report["splits"] = compute_splits(out, cfg, ids)
    log("[6/7] shards")
    shard_dir = write_shards(out, cfg, ids)
    report["shards"] = str(shard_dir)
    report["generation"] = dict(sorted(text.stats.items()))
    log("[7/7] corpus card")
    report["card"] = str(write_card(shard_dir, out / "card"))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    _write_json(report, out / "build_report.json")
    return report

"""The grounding-corpus build as a table of steps (`STEPS`): each step names the corpus paths it reads and writes
(`medlvr.corpus.layout`) and the function that does it. `build_corpus` (the `build-corpus` command) runs the table
in order; the Dagster assets (`medlvr.pipelines.corpus.assets`) run the same steps one asset each, and stage the
same read/write lists from remote storage. Both write the same files, `work/datasets.json` and
`build_report.json` included.

    ingest        per dataset  -> ingest/<id>/{images,rois,rejects}.parquet + summary.json   (corpus.ingest)
    qa_pairs      per dataset  -> qa/<id>/pairs.parquet + stats.json        (questions + verified VLM text)
    dedup         all          -> work/datasets.json, hashes.parquet, dup_groups.parquet, dedup.json
    decontaminate all          -> work/contaminated.parquet + decontamination.json
    splits        all          -> work/splits.parquet + splits.json         (patient/group disjoint)
    shards        all          -> shards/<split>/part-*.parquet + _manifest.json
    card          all          -> card/README.md + PNG plots, also in shards/ (a Hugging Face dataset card),
                                  build_report.json

Every step streams Parquet in batches; only ids, hashes and boxes are held in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from medlvr.corpus import layout
from medlvr.corpus.card import write_card
from medlvr.corpus.catalog import load_catalog, select
from medlvr.corpus.decontam import DecontamReport, find_contaminated, scan_benchmark_images
from medlvr.corpus.dedup import duplicate_groups, group_sizes, iter_image_hashes
from medlvr.corpus.ingest import DatasetMissing, IngestConfig, dataset_failure, dataset_root, ingest_dataset
from medlvr.corpus.kg.graph import load_graph
from medlvr.corpus.qa.questions import ImageFacts, QAConfig, RoiFact, build_pairs
from medlvr.corpus.qa.requests import GeneratorConfig
from medlvr.corpus.qa.text import TextStage
from medlvr.corpus.shards import MANIFEST_NAME, ShardWriter
from medlvr.corpus.splits import assign_splits, iter_split_rows
from medlvr.corpus.tables import parquet_options


@dataclass(frozen=True)
class BuildConfig:
    """Build settings; a file of them loads with `medlvr.corpus.config.load_config(BuildConfig, path, overrides)`
    (unknown keys at any depth are errors)."""

    ingest: IngestConfig = IngestConfig()
    qa: QAConfig = QAConfig()
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the VLM text back end
    caption_rate: float = 0.25  # share of images whose largest ROI gets a VLM region description
    paraphrase_rate: float = 0.25  # share of questions the VLM rewords (answer locked)
    gen_batch_images: int = 32
    dup_radius: int = 4
    overlap_radius: int = 8
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    benchmark_roots: dict[str, str] = field(default_factory=dict)  # benchmark name -> local folder
    decontam_radius: int = 4
    row_group_mb: int = 128
    shard_rows: int = 200_000

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


def write_json(obj: Any, path: Path) -> None:
    """Atomic JSON write (temp file named after the process, then rename: concurrent writers never mix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
    spec = load_catalog()[dataset]
    text = text or TextStage(cfg, kg, out)
    before = Counter(text.stats)
    concepts = tuple(sorted(set(spec.labels.values())))
    counts: Counter = Counter()
    path = out / layout.pairs(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = pq.ParquetWriter(tmp, PAIRS_SCHEMA, **parquet_options(PAIRS_SCHEMA))
    try:
        items: list = []
        groups = iter_grouped(out / layout.images(dataset), out / layout.rois(dataset),
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
    write_json(stats, out / layout.qa_stats(dataset))
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
    rows = [{"image_id": i, "dataset": d, "phash": h} for i, d, h in iter_image_hashes(out / layout.INGEST, datasets)]
    schema = pa.schema([("image_id", pa.string()), ("dataset", pa.string()), ("phash", pa.uint64())])
    _write_table(rows, schema, out / layout.HASHES)
    return out / layout.HASHES


def _hash_rows(out: Path):
    t = pq.read_table(out / layout.HASHES)
    return zip(t.column("image_id").to_pylist(), t.column("dataset").to_pylist(), t.column("phash").to_pylist())


def compute_dup_groups(out: Path, cfg: BuildConfig) -> dict[str, Any]:
    groups = duplicate_groups(_hash_rows(out), cfg.dup_radius, cfg.overlap_radius)
    schema = pa.schema([("image_id", pa.string()), ("dup_group", pa.string())])
    _write_table([{"image_id": k, "dup_group": v} for k, v in sorted(groups.items())], schema,
                 out / layout.DUP_GROUPS)
    sizes = group_sizes(groups)
    report = {"images": len(groups), "groups_with_duplicates": len(sizes),
              "images_in_duplicate_groups": sum(sizes.values()), "largest_group": max(sizes.values(), default=1)}
    write_json(report, out / layout.DEDUP_REPORT)
    return report


def _groups(out: Path) -> dict[str, str]:
    t = pq.read_table(out / layout.DUP_GROUPS)
    return dict(zip(t.column("image_id").to_pylist(), t.column("dup_group").to_pylist()))


def decontaminate(out: Path, cfg: BuildConfig) -> dict[str, Any]:
    rep = DecontamReport()
    roots = {k: Path(v) for k, v in cfg.benchmark_roots.items()}
    matches = find_contaminated(((i, h) for i, _, h in _hash_rows(out)), scan_benchmark_images(roots, rep),
                                cfg.decontam_radius, rep) if roots else []
    schema = pa.schema([("image_id", pa.string()), ("benchmark", pa.string()), ("ref", pa.string()),
                        ("distance", pa.int32())])
    _write_table([dataclasses.asdict(m) for m in matches], schema, out / layout.CONTAMINATED)
    report = {**rep.to_dict(), "removed_images": len({m.image_id for m in matches}),
              "benchmarks_configured": sorted(roots)}
    write_json(report, out / layout.DECONTAM_REPORT)
    return report


def compute_splits(out: Path, cfg: BuildConfig, datasets: list[str]) -> dict[str, Any]:
    split_of, rep = assign_splits(iter_split_rows(out / layout.INGEST, _groups(out), datasets), cfg.split_fractions,
                                  cfg.split_seed)
    schema = pa.schema([("image_id", pa.string()), ("split", pa.string())])
    _write_table([{"image_id": k, "split": v} for k, v in sorted(split_of.items())], schema,
                 out / layout.SPLITS)
    report = rep.to_dict()
    write_json(report, out / layout.SPLITS_REPORT)
    return report


def synthetic_sample_datasets(out: Path, datasets: list[str]) -> list[str]:
    """Those of `datasets` whose ingest read the bundled synthetic sample (their summary says so)."""
    return sorted(d for d in datasets
                  if json.loads((out / layout.ingest_summary(d)).read_text()).get("synthetic_sample", False))


def write_shards(out: Path, cfg: BuildConfig, datasets: list[str]) -> Path:
    """Join QA pairs with image bytes, split and duplicate group; drop contaminated images; publish atomically."""
    splits = dict(zip(*[pq.read_table(out / layout.SPLITS).column(c).to_pylist()
                        for c in ("image_id", "split")]))
    groups = _groups(out)
    bad = set(pq.read_table(out / layout.CONTAMINATED).column("image_id").to_pylist())
    extra = {"config_fingerprint": cfg.fingerprint(),
             "dedup": json.loads((out / layout.DEDUP_REPORT).read_text()),
             "splits": json.loads((out / layout.SPLITS_REPORT).read_text()),
             "decontamination": json.loads((out / layout.DECONTAM_REPORT).read_text()),
             # the datasets whose raw folder was the bundled synthetic sample (the card says so; corpus/provenance.py)
             "synthetic_sample_datasets": synthetic_sample_datasets(out, datasets),
             "generation": {}}
    writer = ShardWriter(out, cfg.row_group_mb * 2**20, cfg.shard_rows)
    try:
        for ds in sorted(datasets):
            stats = json.loads((out / layout.qa_stats(ds)).read_text())
            for k, v in stats["generation"].items():
                extra["generation"][k] = extra["generation"].get(k, 0) + v
            cols = ["image_id", "width", "height", "patient_key", "png"]
            for img, pairs in iter_grouped(out / layout.images(ds), out / layout.pairs(ds),
                                           cols, PAIRS_SCHEMA.names, batch_size=64):
                if img["image_id"] in bad:
                    continue
                for r in pairs:
                    writer.add({**r, "split": splits[img["image_id"]], "patient_key": img["patient_key"],
                                "dup_group": groups.get(img["image_id"], img["image_id"]),
                                "width": img["width"], "height": img["height"], "image": img["png"]})
        return writer.commit(extra)
    except BaseException:
        writer.abort()
        raise


# ------------------------------------------------------------------------------------------------ the step table


@dataclass
class BuildContext:
    """What a step needs besides its files: the corpus folder, the settings, the datasets asked for, and where
    their raw folders are (the ingest step only). The knowledge graph and the text stage are made on first use and
    shared by the steps of one process (so `build_corpus` keeps one generation cache and one backend)."""

    out: Path
    cfg: BuildConfig
    datasets: list[str]  # the datasets asked for; the dedup step publishes those whose ingest and QA outputs exist
    raw_root: Callable[[str], Path] | None = None  # dataset id -> its raw folder (ingest)
    skipped: list[str] = field(default_factory=list)  # datasets dropped on the way (no raw folder)
    progress: bool = False
    _kg: Any = None
    _text: TextStage | None = None

    @property
    def kg(self):
        if self._kg is None:
            self._kg = load_graph()
        return self._kg

    @property
    def text(self) -> TextStage:
        if self._text is None:
            self._text = TextStage(self.cfg, self.kg, self.out)
        return self._text


def publish_datasets(out: Path) -> list[str]:
    """The datasets of the current publish (fixed by the dedup step)."""
    return json.loads((Path(out) / layout.DATASETS).read_text())["datasets"]


def ingest_step(ctx: BuildContext, dataset: str) -> dict[str, Any]:
    if ctx.raw_root is None:
        raise ValueError("the ingest step needs raw_root (dataset id -> raw folder)")
    s = ingest_dataset(load_catalog()[dataset], ctx.raw_root(dataset), ctx.out / layout.INGEST, ctx.cfg.ingest,
                       progress=ctx.progress)
    return s.as_dict()


def qa_step(ctx: BuildContext, dataset: str) -> dict[str, Any]:
    return build_qa_dataset(dataset, ctx.out, ctx.cfg, ctx.kg, ctx.text)


def dedup_step(ctx: BuildContext, dataset: None = None) -> dict[str, Any]:
    """Fixes the dataset set of this publish (work/datasets.json, with each dataset's ingest and QA counts), then
    perceptual hashes and duplicate groups over it."""
    out = ctx.out
    ids = [d for d in ctx.datasets if (out / layout.images(d)).exists() and (out / layout.pairs(d)).exists()]
    if not ids:
        raise FileNotFoundError(f"no dataset of {ctx.datasets} has ingest and QA outputs in {out}")
    ingest = {}
    for d in ids:
        s = json.loads((out / layout.ingest_summary(d)).read_text())
        ingest[d] = {"records": s["records_in"], "rejected": s["records_rejected"], "images": s["images_out"],
                     "rois": s["rois_out"], "synthetic_sample": bool(s.get("synthetic_sample", False))}
    qa = {d: json.loads((out / layout.qa_stats(d)).read_text())["pairs"] for d in ids}
    not_built = sorted(set(ctx.datasets + ctx.skipped) - set(ids))
    write_json({"datasets": ids, "not_built": not_built, "ingest": ingest, "qa": qa}, out / layout.DATASETS)
    compute_hashes(out, ids)
    return {**compute_dup_groups(out, ctx.cfg), "datasets": ids, "not_built": not_built}


def decontaminate_step(ctx: BuildContext, dataset: None = None) -> dict[str, Any]:
    return decontaminate(ctx.out, ctx.cfg)


def splits_step(ctx: BuildContext, dataset: None = None) -> dict[str, Any]:
    return compute_splits(ctx.out, ctx.cfg, publish_datasets(ctx.out))


def shards_step(ctx: BuildContext, dataset: None = None) -> dict[str, Any]:
    return {"shards": str(write_shards(ctx.out, ctx.cfg, publish_datasets(ctx.out)))}


def card_step(ctx: BuildContext, dataset: None = None) -> dict[str, Any]:
    """The corpus card, and build_report.json: every step's report, read back from the files they wrote (so the
    command line and the Dagster assets write the same report)."""
    out = ctx.out
    card = write_card(out / layout.SHARDS, out / layout.CARD)
    published = json.loads((out / layout.DATASETS).read_text())
    manifest = json.loads((out / layout.SHARDS / MANIFEST_NAME).read_text())
    report = {"config_fingerprint": manifest["config_fingerprint"], "skipped": published["not_built"],
              "ingest": published["ingest"], "qa": published["qa"],
              **{k: manifest[k] for k in ("dedup", "decontamination", "splits")},
              "shards": str(out / layout.SHARDS), "generation": dict(sorted(manifest["generation"].items())),
              "card": str(card)}
    write_json(report, out / layout.BUILD_REPORT)
    return report


@dataclass(frozen=True)
class Step:
    """One build step: the corpus paths it reads and writes (layout paths; `{dataset}` in a per-dataset step)
    and the function that does it. Remote storage pulls `reads` before and pushes `writes` after the step."""

    name: str
    run: Callable[[BuildContext, str | None], dict[str, Any]]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    per_dataset: bool = False

    def pull_paths(self, dataset: str | None = None) -> list[str]:
        return layout.for_dataset(self.reads, dataset)

    def push_paths(self, dataset: str | None = None) -> list[str]:
        return layout.for_dataset(self.writes, dataset)


L = layout
STEPS: dict[str, Step] = {s.name: s for s in (
    Step("ingest", ingest_step, (L.PATIENT_SALT,), (L.ingest(), L.PATIENT_SALT), per_dataset=True),
    Step("qa_pairs", qa_step, (L.ingest(),), (L.qa(),), per_dataset=True),
    Step("dedup", dedup_step, (L.INGEST, L.QA), (L.DATASETS, L.HASHES, L.DUP_GROUPS, L.DEDUP_REPORT)),
    Step("decontaminate", decontaminate_step, (L.HASHES,), (L.CONTAMINATED, L.DECONTAM_REPORT)),
    Step("splits", splits_step, (L.INGEST, L.DATASETS, L.DUP_GROUPS), (L.SPLITS, L.SPLITS_REPORT)),
    Step("shards", shards_step, (L.INGEST, L.QA, L.DATASETS, L.DUP_GROUPS, L.DEDUP_REPORT, L.CONTAMINATED,
                                 L.DECONTAM_REPORT, L.SPLITS, L.SPLITS_REPORT), (L.SHARDS,)),
    Step("card", card_step, (L.SHARDS, L.DATASETS), (L.CARD, L.SHARDS, L.BUILD_REPORT)),  # + the card in shards/
)}
del L


def build_corpus(data_root: Path, out: Path, cfg: BuildConfig = BuildConfig(), datasets: list[str] | None = None,
                 progress: bool = True, log=print) -> dict[str, Any]:
    """Every step of `STEPS` in order, in this process. A dataset whose raw folder is missing is skipped (listed
    in the report). Returns the build report (written to <out>/build_report.json) plus the wall time."""
    t0 = time.perf_counter()
    ctx = BuildContext(Path(out), cfg, [s.id for s in select(datasets)],
                       raw_root=lambda ds: dataset_root(Path(data_root), load_catalog()[ds]), progress=progress)
    missing: list[str] = []
    failed: list[str] = []
    report: dict[str, Any] = {}
    for i, step in enumerate(STEPS.values(), 1):
        log(f"[{i}/{len(STEPS)}] {step.name}")
        if not step.per_dataset:
            report = step.run(ctx, None)
            continue
        for ds in list(ctx.datasets):
            try:
                step.run(ctx, ds)
            except DatasetMissing as e:  # a partial data root is fine; the report lists what was skipped
                ctx.datasets.remove(ds)
                ctx.skipped.append(ds)
                missing.append(str(e))
            except Exception as e:  # datasets are isolated: one that raises is listed, the others go on
                ctx.datasets.remove(ds)
                ctx.skipped.append(ds)
                failed.append(dataset_failure(ds, e, ctx.raw_root(ds) if ctx.raw_root else Path(".")))
        if not ctx.datasets:
            raise FileNotFoundError(f"no dataset left under {data_root}: {missing + failed}")
    return {**report, "missing": missing, "failed": failed, "seconds": round(time.perf_counter() - t0, 1)}

"""QA-pair generation and shard writing throughput, and peak memory, against a pandas baseline in the same run.

Data: the 31 sample datasets, ingested once, then replicated R times (new image ids) to make a larger ingest
output. Each measurement runs in a fresh subprocess so its peak RSS is its own.
  ours      corpus.build.build_qa_dataset per dataset (streamed, template backend, no VLM text so both sides do
            the same QA work) + write_shards (streamed, atomic); also once with the default VLM-text rates
  baseline  pandas: read every images/rois table whole, iterrows, the same build_pairs, a list of dicts with the
            image bytes, DataFrame(rows).to_parquet()
Usage: python benchmarks/bench_corpus.py [--reps 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def make_scaled(work: Path, reps: int) -> Path:
    """<work>/x<reps>/ingest/<ds>/{images,rois}.parquet: the sample ingest replicated with fresh image ids."""
    from medlvr.corpus.build import BuildConfig, compute_dup_groups, compute_hashes, compute_splits, decontaminate
    from medlvr.corpus.ingest import run_ingest
    from medlvr.corpus.ingest import IngestConfig
    from medlvr.corpus.sample_data import write_samples

    base = work / "base"
    if not (base / "ingest").exists():
        write_samples(base / "data")
        run_ingest(base / "data", base / "ingest", None, IngestConfig(patient_salt="bench"), progress=False)
    out = work / f"x{reps}"
    if (out / "work" / "splits.parquet").exists():
        return out
    for ds_dir in sorted(p for p in (base / "ingest").iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = pq.read_table(ds_dir / "images.parquet")
        rois = pq.read_table(ds_dir / "rois.parquet")
        dst = out / "ingest" / ds_dir.name
        dst.mkdir(parents=True, exist_ok=True)
        wi = pq.ParquetWriter(dst / "images.parquet", images.schema)
        wr = pq.ParquetWriter(dst / "rois.parquet", rois.schema)
        for r in range(reps):
            def new(i):
                return hashlib.sha1(f"{i}|{r}".encode()).hexdigest()
            # distinct bytes per replica (a tag after the PNG's IEND chunk; decoders ignore it), so that no
            # storage trick can profit from the replication
            pngs = [b + r.to_bytes(4, "big") for b in images.column("png").to_pylist()]
            img_r = images.set_column(0, images.schema.field(0), pa.array([new(i) for i in images.column("image_id").to_pylist()]))
            img_r = img_r.set_column(img_r.schema.get_field_index("png"), img_r.schema.field("png"), pa.array(pngs, pa.binary()))
            wi.write_table(img_r)
            wr.write_table(rois.set_column(0, rois.schema.field(0), pa.array([new(i) for i in rois.column("image_id").to_pylist()])))
        wi.close()
        wr.close()
    ids = sorted(p.name for p in (out / "ingest").iterdir())
    cfg = BuildConfig()
    compute_hashes(out, ids)
    (out / "work" / "dedup.json").write_text(json.dumps(compute_dup_groups(out, cfg)))
    decontaminate(out, cfg)
    compute_splits(out, cfg, ids)
    return out


def run_ours(out: Path, text: bool, row_group_mb: int) -> dict:
    from medlvr.corpus.build import BuildConfig, build_qa_dataset, write_shards
    from medlvr.corpus.kg.graph import load_graph

    # a small row group makes the memory bound visible at benchmark scale (the default, 128 MB, is reached
    # only by a corpus larger than this benchmark writes)
    cfg = BuildConfig(row_group_mb=row_group_mb)
    if not text:
        cfg = BuildConfig(caption_rate=0.0, paraphrase_rate=0.0, row_group_mb=row_group_mb)
    kg = load_graph()
    ids = sorted(p.name for p in (out / "ingest").iterdir())
    t0 = time.perf_counter()
    pairs = sum(build_qa_dataset(ds, out, cfg, kg)["pairs"] for ds in ids)
    t1 = time.perf_counter()
    shard_dir = write_shards(out, cfg, ids)
    t2 = time.perf_counter()
    size = sum(p.stat().st_size for p in shard_dir.rglob("*.parquet"))
    return {"pairs": pairs, "qa_s": t1 - t0, "shard_s": t2 - t1, "shard_mb": size / 2**20}


def run_baseline(out: Path, dst: Path) -> dict:
    import pandas as pd

    from medlvr.corpus.build import _mm_per_px
    from medlvr.corpus.catalog import load_catalog
    from medlvr.corpus.kg.graph import load_graph
    from medlvr.corpus.qa.questions import ImageFacts, QAConfig, RoiFact, build_pairs

    kg, cat = load_graph(), load_catalog()
    t0 = time.perf_counter()
    rows = []
    for ds_dir in sorted((out / "ingest").iterdir()):
        images = pd.read_parquet(ds_dir / "images.parquet")
        rois = pd.read_parquet(ds_dir / "rois.parquet")
        concepts = tuple(sorted(set(cat[ds_dir.name].labels.values())))
        for _, img in images.iterrows():
            mine = rois[rois.image_id == img.image_id]
            facts = ImageFacts(img.image_id, ds_dir.name, img.modality, int(img.width), int(img.height),
                               tuple(RoiFact(r.label, r.concept_id, tuple(r.box), int(r.instance), r.area_mm2)
                                     for _, r in mine.iterrows()),
                               _mm_per_px({"spacing_mm": None if img.spacing_mm is None else list(img.spacing_mm),
                                           "scale_x": img.scale_x, "scale_y": img.scale_y}), concepts)
            for p in build_pairs(facts, kg, QAConfig()):
                rows.append({"qa_id": p.qa_id, "image_id": p.image_id, "question": p.question, "answer": p.answer,
                             "options": p.options, "boxes": p.boxes, "image": img.png})
    t1 = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(dst, compression="zstd")
    t2 = time.perf_counter()
    return {"pairs": len(rows), "qa_s": t1 - t0, "shard_s": t2 - t1, "shard_mb": dst.stat().st_size / 2**20}


def child(args) -> None:
    import medlvr.corpus.build  # noqa: F401  imports before the clock, for both sides
    import pandas  # noqa: F401

    out = Path(args.out)
    r = (run_baseline(out, Path(args.dst)) if args.mode == "baseline"
         else run_ours(out, args.mode == "ours_text", args.row_group_mb))
    r["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(r))


def run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--mode")
    ap.add_argument("--out")
    ap.add_argument("--dst")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--work")
    ap.add_argument("--row-group-mb", type=int, default=4)
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    small, big = make_scaled(work, args.reps), make_scaled(work, args.reps * 4)
    res = {
        "ours": run_child(mode="ours", out=big, row_group_mb=args.row_group_mb), "baseline": run_child(mode="baseline", out=big, dst=work / "pd.parquet"),
        "ours_text": run_child(mode="ours_text", out=big, row_group_mb=args.row_group_mb),
        "ours_small": run_child(mode="ours", out=small, row_group_mb=args.row_group_mb),
        "baseline_small": run_child(mode="baseline", out=small, dst=work / "pd_small.parquet"),
    }
    o, b = res["ours"], res["baseline"]
    qa_rate, qa_base = o["pairs"] / o["qa_s"], b["pairs"] / b["qa_s"]
    mbs, mbs_base = o["shard_mb"] / o["shard_s"], b["shard_mb"] / b["shard_s"]
    rows, rows_base = o["pairs"] / o["shard_s"], b["pairs"] / b["shard_s"]
    text_rate = res["ours_text"]["pairs"] / res["ours_text"]["qa_s"]
    print(f"data under {work}")
    print(f"pairs at {args.reps * 4}x: {o['pairs']} (ours) / {b['pairs']} (baseline)")
    print(f"QA pairs/s   ours {qa_rate:9.0f}   baseline {qa_base:9.0f}   ratio {qa_rate / qa_base:5.2f}")
    print(f"  with VLM-text stage (template backend, default rates): {text_rate:.0f} pairs/s")
    print(f"shard rows/s ours {rows:9.0f}   baseline {rows_base:9.0f}   ratio {rows / rows_base:5.2f}")
    print(f"shard MB/s   ours {mbs:9.1f}   baseline {mbs_base:9.1f}   (each of its own output; sizes "
          f"{o['shard_mb']:.1f} MB vs {b['shard_mb']:.1f} MB for the same pairs and images)")
    print(f"peak RSS MB  ours {res['ours_small']['rss_mb']:.0f} ({args.reps}x) -> {o['rss_mb']:.0f} ({args.reps * 4}x)"
          f" ratio {o['rss_mb'] / res['ours_small']['rss_mb']:.2f};  baseline {res['baseline_small']['rss_mb']:.0f}"
          f" -> {b['rss_mb']:.0f} ratio {b['rss_mb'] / res['baseline_small']['rss_mb']:.2f}")
    per_pair = 1 / text_rate + (o["shard_s"] / o["pairs"])
    print(f"800,000 pairs: {800_000 * per_pair / 60:.1f} min on one core (QA with text + shards); "
          f"2 cores (per-dataset partitions in parallel): {800_000 * per_pair / 60 / 2:.1f} min; "
          f"16 cores: {800_000 * per_pair / 60 / 16:.1f} min if datasets parallelise evenly (QA stage); "
          f"shard writing is one stream: {800_000 * o['shard_s'] / o['pairs'] / 60:.1f} min of that on any machine")


if __name__ == "__main__":
    main()

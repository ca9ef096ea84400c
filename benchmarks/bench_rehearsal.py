"""The real-size rehearsal: `build_corpus` on the real-size sample, per dataset, with 1 and 2 ingest workers, and a
projection of the full corpus from the measured per-record costs.

1. Writes the real-size sample (`medlvr sample-data OUT --scale real`: every catalog dataset's images and volumes at
   the real release's size, dtype, bit depth and format; a handful of records each), or reuses `--data`.
2. For each worker count and each dataset, a fresh subprocess runs the library entry point of `medlvr build-corpus`
   (`medlvr.corpus.build.build_corpus`, that dataset alone, `ingest.workers = N`), timing every build step from the
   step log lines; the bench reaps the subprocess with `os.wait4`, whose ru_maxrss is the peak RSS of the largest
   process of that run (the driver or one of its ingest workers): the peak RSS per worker.
3. Records per dataset: records and images, source bytes read, ingest seconds (the ingest's own `seconds` in
   summary.json), images/s per core, bytes read/s, peak RSS, Parquet bytes per image, QA pairs/s, shard rows/s.
4. One more build of every dataset together (1 worker) measures the QA and shard rates with their fixed costs
   paid once (a per-dataset build of a handful of records is dominated by them; its per-dataset QA pairs/s and
   shard rows/s are reported but not projected from).
5. Projection for the full real corpus: each dataset's `real_size.records` (the catalog) x its measured seconds per
   record (its ingest seconds per record with 1 worker + its QA pairs per record at the whole build's QA rate:
   core-seconds) summed; wall time on N cores = core-seconds / (N x per-core efficiency), the efficiency being
   (2-worker speed / 1-worker speed) / 2 measured here (1 on one core), plus the shard step once (the full corpus's
   pairs at the whole build's rows/s, one stream). Names the slowest dataset (seconds per record x real records).

Writes the JSON report (`--json`) with every measured record and the projection; `projection_from(records)`
recomputes the projection from those records alone (the test does so independently).

    python benchmarks/bench_rehearsal.py [--work DIR] [--data REAL_SAMPLE] [--datasets ID ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORES = (1, 4, 16, 64)
QUICK_DATASETS = ["nih_bbox", "msd_prostate"]  # a 2-D PNG family and a volume family, small at real size

DRIVER = r"""
import dataclasses, json, sys, time
from pathlib import Path
from medlvr.corpus.build import BuildConfig, build_corpus
data, out, ds, workers = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
cfg = BuildConfig()
cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, workers=workers))
stamps = []
def log(line):
    stamps.append((line.split("] ", 1)[-1], time.perf_counter()))
t0 = time.perf_counter()
build_corpus(Path(data), out, cfg, datasets=ds.split(","), progress=False, log=log)
end = time.perf_counter()
steps = {name: round((stamps[i + 1][1] if i + 1 < len(stamps) else end) - t, 4) for i, (name, t) in enumerate(stamps)}
print("STEPS " + json.dumps({"steps": steps, "wall_s": round(end - t0, 4)}))
"""


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _rows(paths) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def run_one(data: Path, out: Path, ds: str, workers: int) -> dict:
    """One build of one dataset in a fresh process; its step times, peak RSS and output counts."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(data), str(out), ds, str(workers)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{ds} workers={workers}: build failed: {proc.stderr.strip().splitlines()[-1:]}")
    stdout = proc.stdout
    line = next(x for x in stdout.splitlines() if x.startswith("STEPS "))
    steps = json.loads(line[6:])
    summary = json.loads((out / "ingest" / ds / "summary.json").read_text())
    qa_rows = _rows(sorted((out / "qa").rglob("*.parquet")))
    shard_rows = _rows(sorted((out / "shards").rglob("*.parquet")))
    return {"dataset": ds, "workers": workers, "steps": steps["steps"], "wall_s": steps["wall_s"],
            "ingest_s": summary["seconds"], "records": summary["records_in"], "images": summary["images_out"],
            "parquet_bytes": _tree_bytes(out / "ingest" / ds), "qa_pairs": qa_rows, "shard_rows": shard_rows}


def run_whole(data: Path, out: Path, ids: list[str]) -> dict:
    """Every dataset in one build (1 worker): the QA and shard rates with their fixed costs paid once, as in the
    full build (a per-dataset build of a handful of records is dominated by them)."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(data), str(out), ",".join(ids), "1"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"whole build failed: {proc.stderr.strip().splitlines()[-1:]}")
    steps = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("STEPS "))[6:])
    qa_rows = _rows(sorted((out / "qa").rglob("*.parquet")))
    shard_rows = _rows(sorted((out / "shards").rglob("*.parquet")))
    return {"steps": steps["steps"], "wall_s": steps["wall_s"], "qa_pairs": qa_rows, "shard_rows": shard_rows,
            "qa_pairs_per_s": round(qa_rows / steps["steps"]["qa_pairs"], 1),
            "shard_rows_per_s": round(shard_rows / steps["steps"]["shards"], 1)}


def _peak_rss_run(data: Path, out: Path, ds: str, workers: int) -> dict:
    """run_one in a fresh helper process of its own, so RUSAGE_CHILDREN there is this build's alone."""
    code = ("import json,sys,resource; sys.path.insert(0, %r); import bench_rehearsal as b; "
            "r = b.run_one(b.Path(sys.argv[1]), b.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])); "
            "r['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1); "
            "print('REC ' + json.dumps(r))") % str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", code, str(data), str(out), ds, str(workers)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{ds} workers={workers}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("REC "))[4:])


def derive(rec: dict, source_bytes: int) -> dict:
    """The per-dataset rates of one measured build."""
    steps = rec["steps"]
    ingest_s, qa_s, shard_s = rec["ingest_s"], steps.get("qa_pairs", 0.0), steps.get("shards", 0.0)
    return {**rec, "source_bytes": source_bytes,
            "images_per_s_per_core": round(rec["images"] / ingest_s / rec["workers"], 3) if ingest_s else None,
            "bytes_read_per_s": round(source_bytes / ingest_s) if ingest_s else None,
            "parquet_bytes_per_image": round(rec["parquet_bytes"] / rec["images"]) if rec["images"] else None,
            "qa_pairs_per_s": round(rec["qa_pairs"] / qa_s, 1) if qa_s else None,
            "shard_rows_per_s": round(rec["shard_rows"] / shard_s, 1) if shard_s else None,
            "ingest_seconds_per_record": round(ingest_s / rec["records"], 5) if rec["records"] else None}


def projection_from(records: list[dict], real_records: dict[str, int], whole: dict) -> dict:
    """The full-corpus projection from the measured records alone (module docstring, step 4): per record, the
    dataset's ingest seconds (1 worker) plus its QA pairs per record at the whole build's QA rate; the shard step
    once, at the whole build's shard rate, for the full corpus's pairs."""
    one = {r["dataset"]: r for r in records if r["workers"] == 1}
    two = {r["dataset"]: r for r in records if r["workers"] == 2}
    common = sorted(set(one) & set(two))
    w1 = sum(one[d]["ingest_s"] for d in common)
    w2 = sum(two[d]["ingest_s"] for d in common)
    ratio = w1 / w2 if w2 else None
    efficiency = min(1.0, ratio / 2) if ratio else 1.0
    pairs_per_record = {d: one[d]["qa_pairs"] / one[d]["records"] for d in one if one[d]["records"]}
    cost = {d: (one[d]["ingest_s"] / one[d]["records"] + pairs_per_record[d] / whole["qa_pairs_per_s"])
            * real_records[d] for d in pairs_per_record}
    core_s = sum(cost.values())
    full_pairs = sum(pairs_per_record[d] * real_records[d] for d in pairs_per_record)
    shard_s = full_pairs / whole["shard_rows_per_s"]
    wall = {n: (core_s / (n * (efficiency if n > 1 else 1.0)) + shard_s) for n in CORES}
    slowest = max(cost, key=cost.get) if cost else None
    return {"two_over_one_worker": round(ratio, 3) if ratio else None, "per_core_efficiency": round(efficiency, 3),
            "core_seconds": round(core_s, 1), "shard_seconds": round(shard_s, 1),
            "full_qa_pairs": round(full_pairs), "wall_hours": {str(n): round(v / 3600, 3) for n, v in wall.items()},
            "slowest_dataset": slowest, "slowest_core_hours": round(cost[slowest] / 3600, 3) if slowest else None,
            "dataset_core_hours": {d: round(v / 3600, 4) for d, v in sorted(cost.items(), key=lambda kv: -kv[1])}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--data", help="an existing real-size sample to reuse (default: write one under --work)")
    ap.add_argument("--datasets", nargs="+", metavar="ID", help="only these (default: every catalog dataset)")
    ap.add_argument("--quick", action="store_true", help=f"two small datasets ({', '.join(QUICK_DATASETS)})")
    ap.add_argument("--json", help="write the report here (default: <work>/rehearsal.json)")
    a = ap.parse_args(argv)
    from medlvr.corpus.catalog import load_catalog
    from medlvr.corpus.sample_data import write_samples

    cat = load_catalog()
    ids = a.datasets or (QUICK_DATASETS if a.quick else list(cat))
    work = Path(a.work or tempfile.mkdtemp(prefix="rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) if a.data else work / "real"
    t0 = time.perf_counter()
    if not a.data:
        write_samples(data, ids, scale="real")
    write_s = time.perf_counter() - t0
    load = os.getloadavg()
    records = []
    for workers in (1, 2):
        for ds in ids:
            out = work / f"build-w{workers}-{ds}"
            rec = _peak_rss_run(data, out, ds, workers)
            records.append(derive(rec, _tree_bytes(data / ds)))
            print(f"{ds:>15} w={workers} records {rec['records']:3d} images {rec['images']:4d} ingest "
                  f"{rec['ingest_s']:7.2f}s peak RSS {rec['peak_rss_mb']:7.1f} MB", flush=True)
    whole = run_whole(data, work / "build-whole", ids)
    print(f"whole build (1 worker, {len(ids)} datasets): QA {whole['qa_pairs_per_s']} pairs/s, shards "
          f"{whole['shard_rows_per_s']} rows/s", flush=True)
    real = {d: cat[d].real_size.records for d in ids}
    proj = projection_from(records, real, whole)
    report = {"datasets": ids, "write_sample_s": round(write_s, 1), "load_average_at_start": load,
              "load_average_at_end": os.getloadavg(), "cpu_count": os.cpu_count(), "real_records": real,
              "records": records, "whole": whole, "projection": proj}
    out_json = Path(a.json or work / "rehearsal.json")
    out_json.write_text(json.dumps(report, indent=1))
    print(f"\nload average {load[0]:.2f} at start, {report['load_average_at_end'][0]:.2f} at end; "
          f"2 workers / 1 worker ingest speed: {proj['two_over_one_worker']}x")
    print(f"{'dataset':>15} {'img/s/core':>10} {'MB read/s':>9} {'RSS MB':>7} {'PQ KB/img':>9} {'QA/s':>8} "
          f"{'rows/s':>8} {'ingest s/rec':>8} {'real recs':>9} {'core-h':>8}")
    for r in records:
        if r["workers"] == 1:
            print(f"{r['dataset']:>15} {r['images_per_s_per_core'] or 0:10.2f} {(r['bytes_read_per_s'] or 0) / 1e6:9.1f} "
                  f"{max(x['peak_rss_mb'] for x in records if x['dataset'] == r['dataset']):7.0f} "
                  f"{(r['parquet_bytes_per_image'] or 0) / 1e3:9.1f} {r['qa_pairs_per_s'] or 0:8.0f} "
                  f"{r['shard_rows_per_s'] or 0:8.0f} {r['ingest_seconds_per_record'] or 0:8.3f} {real[r['dataset']]:9d} "
                  f"{proj['dataset_core_hours'][r['dataset']]:8.3f}")
    print(f"\nprojected full corpus ({sum(real.values())} records, {proj['full_qa_pairs']} QA pairs): "
          + ", ".join(f"{n} cores {h} h" for n, h in proj["wall_hours"].items()))
    print(f"slowest dataset: {proj['slowest_dataset']} ({proj['slowest_core_hours']} core-hours)")
    print(f"report: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

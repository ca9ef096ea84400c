"""One tick of `raw_dataset_sensor` on a raw folder of 100,000 files, against the old full walk in the same run.

Data: <work>/busi/ with --dirs sub-folders of --files-per-dir empty-ish files (100 x 1,000 by default: the shape
of an image dataset), written once and reused.
  ours      the sensor itself (`raw_dataset_sensor`, built context, `DatasetRoots` on the folder) evaluated with a
            cursor, so the tick computes `quick_folder_fingerprint` (a stat per directory + 256 sampled files)
  baseline  `folder_fingerprint`: the full walk the sensor ran before (a stat of every file), what the
            raw_dataset asset still computes once per run as its data version
Both run --repeats times, interleaved, warm page cache (the second pass over the same tree); medians reported.
Usage: python benchmarks/bench_sensor.py [--work DIR] [--dirs 100] [--files-per-dir 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg

from medlvr.pipelines.code_version import folder_fingerprint
from medlvr.pipelines.corpus.resources import DatasetRoots

with warnings.catch_warnings():  # partitioned asset checks are a 1.13 preview feature (the import defines them)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    from medlvr.pipelines.corpus.sensors import raw_dataset_sensor


def make_tree(work: Path, dirs: int, per_dir: int) -> Path:
    root = work / "busi"
    done = root / ".complete"
    if done.exists() and done.read_text() == f"{dirs}x{per_dir}":
        return root
    for i in range(dirs):
        d = root / f"patient_{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_dir):
            (d / f"slice_{j:05d}.png").write_bytes(b"\x89PNG")
    done.write_text(f"{dirs}x{per_dir}")
    return root


def tick(roots: DatasetRoots, cursor: str | None):
    with dg.build_sensor_context(cursor=cursor, resources={"dataset_roots": roots}) as ctx:
        result = raw_dataset_sensor(ctx)
        return result, ctx.cursor


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medlvr-bench-sensor")
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--files-per-dir", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    root = make_tree(args.work, args.dirs, args.files_per_dir)
    n_files = sum(1 for d in root.iterdir() if d.is_dir() for _ in d.iterdir())
    print(f"tree: {n_files} files in {args.dirs} folders under {root} ({time.perf_counter() - t0:.1f}s to prepare)")
    roots = DatasetRoots(data_root=str(args.work), datasets=["busi"])
    _, cursor = tick(roots, None)  # baseline tick: records the fingerprint (and warms the page cache)
    folder_fingerprint(root)
    ours, base = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        result, cursor = tick(roots, cursor)
        ours.append(time.perf_counter() - t)
        assert isinstance(result, dg.SkipReason), result  # nothing changed: no run
        t = time.perf_counter()
        folder_fingerprint(root)
        base.append(time.perf_counter() - t)
    o, b = statistics.median(ours), statistics.median(base)
    print(f"sensor tick (quick fingerprint): median {o:.3f}s  runs {[round(x, 3) for x in ours]}")
    print(f"old full walk (every file):      median {b:.3f}s  runs {[round(x, 3) for x in base]}")
    print(f"full walk / tick: x{b / o:.1f}; tick goal <= 2 s: {'met' if o <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()

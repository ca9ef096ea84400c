"""benchmarks/bench_rehearsal.py --quick: the report's structure, and its projection recomputed independently from
the measured records it wrote (no time is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_quick_rehearsal_report_and_projection(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_rehearsal.py"), "--quick", "--work",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "projected full corpus" in proc.stdout and "slowest dataset:" in proc.stdout
    rep = json.loads((tmp_path / "rehearsal.json").read_text())
    ids = rep["datasets"]
    assert len(ids) == 2 and sorted((r["dataset"], r["workers"]) for r in rep["records"]) == sorted(
        (d, w) for d in ids for w in (1, 2))
    for r in rep["records"]:
        assert r["records"] >= 1 and r["images"] >= 1 and r["peak_rss_mb"] > 0 and r["qa_pairs"] >= 1
        for key in ("images_per_s_per_core", "bytes_read_per_s", "parquet_bytes_per_image", "qa_pairs_per_s",
                    "shard_rows_per_s", "ingest_seconds_per_record"):
            assert r[key] is not None and r[key] > 0, key
    # the real record counts are the catalog's (read from the YAML), and the projection follows from the records
    real = {d: yaml.safe_load((REPO / "corpus" / "catalog" / f"{d}.yaml").read_text())["real_size"]["records"]
            for d in ids}
    assert rep["real_records"] == real
    one = {r["dataset"]: r for r in rep["records"] if r["workers"] == 1}
    two = {r["dataset"]: r for r in rep["records"] if r["workers"] == 2}
    ratio = sum(one[d]["ingest_s"] for d in ids) / sum(two[d]["ingest_s"] for d in ids)
    eff = min(1.0, ratio / 2)
    whole = rep["whole"]
    assert whole["qa_pairs"] >= 1 and whole["shard_rows"] >= 1
    qa_rate = whole["qa_pairs"] / whole["steps"]["qa_pairs"]
    shard_rate = whole["shard_rows"] / whole["steps"]["shards"]
    cost = {d: (one[d]["ingest_s"] / one[d]["records"] + one[d]["qa_pairs"] / one[d]["records"] / qa_rate) * real[d]
            for d in ids}
    pairs = sum(one[d]["qa_pairs"] / one[d]["records"] * real[d] for d in ids)
    shard_s = pairs / shard_rate
    proj = rep["projection"]
    assert abs(proj["two_over_one_worker"] - ratio) < 1e-3
    assert proj["slowest_dataset"] == max(cost, key=cost.get)
    for n, hours in proj["wall_hours"].items():
        want = (sum(cost.values()) / (int(n) * (eff if int(n) > 1 else 1.0)) + shard_s) / 3600
        assert abs(hours - want) <= 0.002 + 0.02 * want, (n, hours, want)

"""Scoring glue and the paper's Tables 3 and 4 (plus the Fig. 5 data) on scored prediction rows.

A *scored row* is a prediction record (see `medlvr.evaluation.inference`) joined with its Sample:
    {benchmark, sample_id, model, k_latent, variant, n_tokens, latency_s, finish_reason, kind, tags,
     parsed, correct (bool), parse_failed / parse_fail (bool), truncated, modality}
Scoring itself is `medlvr.evaluation.scoring` (docs/benchmarks.md §3: no random or similarity fallbacks; unparseable is
wrong); Tables 1 and 2 live there too. This module computes Tables 3 / 4 and the Fig. 5 data.
All accuracies are percentages over N, unparseable items included.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from medlvr.corpus.evalsets.base import Sample
from medlvr.evaluation.config import EFFICIENCY_KINDS, EFFICIENCY_QUOTAS
from medlvr.evaluation.scoring import canonical_modality, in_subset, score_record


def score_records(records: Iterable[dict], samples: Mapping[str, Sample], protocol: str = "medlvr") -> list[dict]:
    """Score records against their Samples (by sample_id, one benchmark) with `medlvr.evaluation.scoring.score_record`;
    records without a Sample are dropped. Adds "modality" (Table 1 spelling) and "parse_fail" (= parse_failed)."""
    rows = []
    for rec in records:
        s = samples.get(str(rec["sample_id"]))
        if s is None:
            continue
        r = score_record(rec, s, protocol)
        r["modality"] = canonical_modality(s.tags.get("modality")) or ""
        r["parse_fail"] = r["parse_failed"]
        rows.append(r)
    return rows


def accuracy(rows: Sequence[dict]) -> float:
    return 100.0 * sum(bool(r["correct"]) for r in rows) / len(rows) if rows else float("nan")


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ------------------------------------------------------------------------------------ Table 3 (efficiency)


def efficiency_subset(samples: Mapping[str, Sequence[Sample]], seed: int = 0,
                      quotas: Mapping[str, int] | None = None) -> dict[str, list[str]]:
    """The efficiency subset: per benchmark, `quota` ids drawn with `random.Random(seed)` from the sorted ids
    of the eligible samples (SLAKE / VQA-RAD yes/no, MMMU multiple choice), capped by availability.

    Deterministic given the ids: the same seed and benchmark contents give the same manifest.
    """
    quotas = dict(EFFICIENCY_QUOTAS if quotas is None else quotas)
    manifest = {}
    for bench, quota in quotas.items():
        if bench not in samples:
            continue
        kind = EFFICIENCY_KINDS.get(bench)
        ids = sorted(s.sample_id for s in samples[bench] if kind is None or s.kind == kind)
        rng = random.Random(f"{seed}:{bench}")
        manifest[bench] = sorted(rng.sample(ids, min(int(quota), len(ids))))
    return manifest


def write_manifest(path: Path, manifest: dict[str, list[str]], seed: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"seed": seed, "counts": {b: len(v) for b, v in manifest.items()},
                                      "ids": manifest}, indent=1))


def table3(rows_by_model: Mapping[str, Sequence[dict]]) -> list[dict]:
    """One row per model over its efficiency-subset rows:
    {model, n, avg_tokens, avg_text_tokens?, total_time_s, accuracy, parse_fail_rate}.

    total_time_s is the sum of the per-sample latencies (= wall time of the generate calls; model load excluded).
    """
    out = []
    for model, rows in rows_by_model.items():
        out.append({
            "model": model,
            "n": len(rows),
            "avg_tokens": _mean([float(r["n_tokens"]) for r in rows]),
            "total_time_s": sum(float(r["latency_s"]) for r in rows),
            "accuracy": accuracy(rows),
            "parse_fail_rate": 100.0 * sum(bool(r["parse_fail"]) for r in rows) / len(rows) if rows else float("nan"),
        })
    return out


# --------------------------------------------------------------------------------- Table 4 (training variants)


def table4(rows_by_variant: Mapping[str, Sequence[dict]], benchmarks: Sequence[str],
           subsets: Mapping[str, str] | None = None) -> list[dict]:
    """Variants side by side: {variant, <benchmark>: accuracy, ..., "avg": mean over the benchmarks present}.

    subsets: benchmark -> subset scored ("all", "closed", "mc", ...; `medlvr.evaluation.scoring.in_subset`), e.g.
    `scoring.table2_subsets()` for the paper's closed yes/no SLAKE / VQA-RAD; default "all".
    """
    subsets = subsets or {}
    out = []
    for variant, rows in rows_by_variant.items():
        row: dict = {"variant": variant}
        accs = []
        for b in benchmarks:
            sub = [r for r in rows if r["benchmark"] == b and in_subset(r, subsets.get(b, "all"))]
            row[b] = accuracy(sub) if sub else float("nan")
            if sub:
                accs.append(row[b])
        row["avg"] = _mean(accs)
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------- Fig. 5 (K sweep)


def accuracy_by_modality_and_k(rows: Iterable[dict]) -> dict[str, dict[int, float]]:
    """{modality: {K: accuracy}} plus an "overall" (pooled) series; rows carry k_latent and modality."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        k = int(r["k_latent"])
        groups.setdefault((r.get("modality") or "unknown", k), []).append(r)
        groups.setdefault(("overall", k), []).append(r)
    out: dict[str, dict[int, float]] = {}
    for (mod, k), rs in sorted(groups.items()):
        out.setdefault(mod, {})[k] = accuracy(rs)
    return out


# ------------------------------------------------------------------------------------------------ formatting


def fmt(v, digits: int = 1) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.{digits}f}"
    return str(v)


def as_grid(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
            digits: int = 1) -> tuple[list[str], list[list[str]]]:
    """(headers, formatted cells) for the report."""
    return list(headers or columns), [[fmt(r.get(c, float("nan")), digits) for c in columns] for r in rows]

"""Scoring: a pure, re-runnable pass over per-sample prediction JSONL (docs/benchmarks.md §3).

Prediction record (one JSON object per line, appended by the inference writer as results arrive; `make_record`
builds one from a Sample):

    {"benchmark": "slake",            # Sample.benchmark                                   (required)
     "sample_id": "test-11",          # Sample.sample_id, stable within the benchmark        (required)
     "output": "<Medlvr_Start>...",   # raw decoded text, special tokens kept                (required)
     "n_tokens": 12,                  # generated tokens, latent slots included
     "latency_s": 0.41,               # wall time of this sample's generation (batch time / batch size)
     "model": "medlvr-tiny",          # checkpoint name or path, "base" for the base model
     "k_latent": 8,                   # latent budget K (0 = plain decoding)
     "variant": "",                   # run variant (latent ablation "zero"/"shuffle"/"noise", "" = none)
     "finish_reason": "stop",         # "stop" | "length" (truncated)
     "kind": "yesno", "answer": "yes", "options": [["A", "..."], ...], "tags": {...}   # gold, copied from the Sample
     ...}                             # anything else the writer adds (prompt_hash, rank, batch_size, ...) is kept

Gold comes from `samples` ({(benchmark, sample_id): Sample}) when given, else from the record's own
kind/answer/options/tags, so a JSONL file written with `make_record` can be scored on its own.

`score_records` adds: parsed (str | None), correct (bool), parse_failed (bool), truncated (bool). Unparseable
counts as wrong. Aggregates: `summarize` (accuracy per benchmark, per subset closed/all, per kind, per tag),
`table1` (OmniMedVQA per modality + pooled micro + mean macro), `table2` (five external benchmarks + their mean).
Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from medlvr.corpus.evalsets.answers import is_correct, parse_answer
from medlvr.corpus.evalsets.base import BenchmarkError
from medlvr.corpus.evalsets.registry import all_benchmarks

REQUIRED = ("benchmark", "sample_id", "output")
GOLD = ("kind", "answer")

TABLE1_MODALITIES = ("CT", "MRI", "X-Ray", "Ultrasound", "Dermoscopy", "Fundus", "OCT", "Microscopy")
# spellings in OmniMedVQA (modality_type, sic) and Med-R1 file names -> Table 1 column
MODALITY_ALIASES = {
    "ct": "CT", "ct(computed tomography)": "CT", "computed tomography": "CT",
    "mri": "MRI", "mr (mag-netic resonance imaging)": "MRI", "mr": "MRI", "magnetic resonance imaging": "MRI",
    "x-ray": "X-Ray", "xray": "X-Ray",
    "ultrasound": "Ultrasound", "us": "Ultrasound",
    "dermoscopy": "Dermoscopy",
    "fundus": "Fundus", "fundus photography": "Fundus",
    "oct": "OCT", "oct (optical coherence tomography": "OCT", "oct (optical coherence tomography)": "OCT",
    "microscopy": "Microscopy", "microscopy images": "Microscopy",
}



def table2_subsets() -> dict[str, str]:
    """Table 2's columns, from the benchmark registry: every external benchmark (in table order) -> the subset of its
    items scored (its `table2_subset`: MedLVR reads SLAKE and VQA-RAD as closed yes/no, MMMU as its MC items)."""
    return {name: b.table2_subset for name, b in all_benchmarks().items() if b.external}


def canonical_modality(name: str | None) -> str | None:
    if name is None:
        return None
    return MODALITY_ALIASES.get(str(name).strip().lower(), str(name).strip())


# ---- records -----------------------------------------------------------------------------------------------


def make_record(sample, output: str, **extra: Any) -> dict:
    """A prediction record for a Sample (gold included, so the file can be scored without the benchmark)."""
    return {"benchmark": sample.benchmark, "sample_id": sample.sample_id, "output": output, **extra,
            "kind": sample.kind, "answer": sample.answer, "options": [list(o) for o in sample.options],
            "tags": dict(sample.tags)}


def record_key(rec: Mapping) -> tuple:
    return (rec["benchmark"], rec["sample_id"], rec.get("model"), rec.get("k_latent"), rec.get("variant"),
            rec.get("ablation"))


def read_records(path: Path) -> list[dict]:
    """Records of a JSONL file. A truncated LAST line (a crash while appending) is ignored; a malformed line
    elsewhere raises. A repeated key (benchmark, sample_id, model, k_latent, variant, ablation) keeps the last
    record."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    by_key: dict[tuple, dict] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a JSON record ({e})") from e
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise ValueError(f"{path}:{n}: record lacks {missing} (required: {list(REQUIRED)})")
        by_key[record_key(rec)] = rec
    return list(by_key.values())


def write_records(path: Path, records: Iterable[Mapping]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


# ---- per-sample scoring ------------------------------------------------------------------------------------


def score_record(rec: Mapping, sample=None, protocol: str = "medlvr") -> dict:
    """The record with its verdict under `protocol` (medlvr.evaluation.protocols) added."""
    from medlvr.evaluation.protocols import get_protocol  # protocols imports this module's neighbours, not it

    if sample is not None:
        kind, answer, options, tags = sample.kind, sample.answer, sample.options, dict(sample.tags)
    else:
        missing = [k for k in GOLD if k not in rec]
        if missing:
            raise ValueError(f"record {rec.get('benchmark')}/{rec.get('sample_id')} lacks gold {missing} and no "
                             f"sample was given")
        kind, answer = rec["kind"], rec["answer"]
        options, tags = tuple(tuple(o) for o in rec.get("options") or ()), dict(rec.get("tags") or {})
    parsed, correct = get_protocol(protocol).judge(rec["benchmark"], rec["output"], kind, answer, options, tags)
    return {**rec, "kind": kind, "answer": answer, "options": [list(o) for o in options], "tags": tags,
            "parsed": parsed, "correct": correct, "parse_failed": parsed is None,
            "truncated": rec.get("finish_reason") == "length"}


def score_records(records: Iterable[Mapping], samples: Mapping[tuple[str, str], Any] | None = None,
                  protocol: str = "medlvr") -> list[dict]:
    """Score records; with `samples`, every record must have its (benchmark, sample_id) there."""
    out = []
    for rec in records:
        sample = None
        if samples is not None:
            key = (rec["benchmark"], rec["sample_id"])
            if key not in samples:
                raise BenchmarkError(f"no sample {key} for a prediction record (predictions from another benchmark version?)")
            sample = samples[key]
        out.append(score_record(rec, sample, protocol))
    return out


def score_file(pred_path: Path, out_path: Path | None = None, samples=None) -> list[dict]:
    scored = score_records(read_records(pred_path), samples)
    if out_path is not None:
        write_records(out_path, scored)
    return scored


# ---- aggregates --------------------------------------------------------------------------------------------


def in_subset(rec: Mapping, subset: str) -> bool:
    """"all"; "closed" (tags.closed: SLAKE / VQA-RAD closed yes/no); "mc" / "yesno" / "open" (by kind)."""
    if subset == "all":
        return True
    if subset == "closed":
        return bool(rec.get("tags", {}).get("closed"))
    if subset in ("mc", "yesno", "open"):
        return rec.get("kind") == subset
    raise ValueError(f"unknown subset {subset!r}")


def stats(records: Iterable[Mapping]) -> dict:
    recs = list(records)
    n = len(recs)
    correct = sum(bool(r["correct"]) for r in recs)
    failed = sum(bool(r.get("parse_failed", r.get("parse_fail"))) for r in recs)
    tokens = [r["n_tokens"] for r in recs if r.get("n_tokens") is not None]
    latency = [r["latency_s"] for r in recs if r.get("latency_s") is not None]
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None,
            "parse_failed": failed, "parse_fail_rate": failed / n if n else None,
            "truncated": sum(bool(r.get("truncated")) for r in recs),
            "mean_tokens": sum(tokens) / len(tokens) if tokens else None,
            "total_latency_s": sum(latency) if latency else None}


def group_by(records: Iterable[Mapping], key: str) -> dict[Any, list[Mapping]]:
    """Group records by a top-level field (e.g. "model", "k_latent") or "tags.<name>"."""
    out: dict[Any, list[Mapping]] = defaultdict(list)
    for r in records:
        value = r.get("tags", {}).get(key[5:]) if key.startswith("tags.") else r.get(key)
        out[value].append(r)
    return dict(out)


def summarize(scored: Iterable[Mapping], by_tags: tuple[str, ...] = ()) -> dict[str, dict]:
    """Per benchmark: {"all", "closed" (when any item is flagged), "by_kind", "by_modality" (when items carry
    tags.modality: OmniMedVQA) and "by_<tag>" for each tag in `by_tags`}."""
    out = {}
    for bench, recs in sorted(group_by(scored, "benchmark").items()):
        entry = {"all": stats(recs), "by_kind": {k: stats(v) for k, v in sorted(group_by(recs, "kind").items())}}
        closed = [r for r in recs if in_subset(r, "closed")]
        if closed:
            entry["closed"] = stats(closed)
        if bench == "omnimedvqa":
            entry["by_modality"] = table1(recs)
        for tag in by_tags:
            groups = group_by(recs, f"tags.{tag}")
            entry[f"by_{tag}"] = {str(k): stats(v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}
        out[bench] = entry
    return out


def table1(scored: Iterable[Mapping], benchmark: str = "omnimedvqa") -> dict:
    """OmniMedVQA Table 1: {"modalities": {column: stats}, "other": {unmapped modality: stats},
    "pooled": micro accuracy over every item, "mean": macro mean over the Table 1 modalities present}."""
    recs = [r for r in scored if r["benchmark"] == benchmark]
    cols: dict[str, list] = defaultdict(list)
    for r in recs:  # tags.modality (scored records), or a top-level modality (flattened rows)
        cols[canonical_modality(r.get("tags", {}).get("modality") or r.get("modality")) or "unknown"].append(r)
    modalities = {m: stats(cols[m]) for m in TABLE1_MODALITIES if cols.get(m)}
    other = {m: stats(v) for m, v in sorted(cols.items()) if m not in TABLE1_MODALITIES}
    accs = [s["accuracy"] for s in modalities.values()]
    pooled = stats(recs)
    return {"modalities": modalities, "other": other, "pooled": pooled["accuracy"], "n": pooled["n"],
            "mean": sum(accs) / len(accs) if accs else None, "missing": [m for m in TABLE1_MODALITIES
                                                                        if m not in modalities]}


def table2(scored: Iterable[Mapping], subsets: Mapping[str, str] | None = None) -> dict:
    """Table 2: {"benchmarks": {name: stats of its subset}, "average": mean accuracy over the benchmarks present
    (the paper's five-benchmark average when none is missing), "missing": [names without records]}."""
    recs = list(scored)
    rows, missing = {}, []
    for bench, subset in (table2_subsets() if subsets is None else subsets).items():
        items = [r for r in recs if r["benchmark"] == bench and in_subset(r, subset)]
        if items:
            rows[bench] = {**stats(items), "subset": subset}
        else:
            missing.append(bench)
    accs = [r["accuracy"] for r in rows.values()]
    return {"benchmarks": rows, "average": sum(accs) / len(accs) if accs else None, "missing": missing}

"""Machine-readable results of an evaluation, next to the report:

* `samples/<model>/k<K>/<variant>/<benchmark>.jsonl`: one line per scored sample (as lmms-eval's sample logs):
  question_id, benchmark, model, k_latent, variant, ablation, question, options, gold, raw_output, parsed,
  correct, parse_failure (None when the output parsed, else why not: one short reason).
* `tables/NN_<caption>.csv`: every report table, exactly the cells the report shows (header row first).
* `results.json`: {"title", "config", "models" (identities: checkpoint path + step + sha256 of its weights, tiny
  seed, or endpoint base_url + served model), "tables": [{"name", "section", "caption", "csv", "columns",
  "rows"}], "samples": [per-sample files]}; table cells are numbers where the report shows a number, null
  where it shows "–".
The report links all three (`links_section`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from medlvr.corpus.config import config_to_dict
from medlvr.corpus.evalsets.answers import answer_span, clean
from medlvr.corpus.evalsets.base import Sample
from medlvr.evaluation.config import EvalConfig, ModelSpec
from medlvr.evaluation.predictions import Job, pred_path
from medlvr.evaluation.protocols import get_protocol
from medlvr.evaluation.report import NO_VALUE, Section, Table, table_markdown
from medlvr.training.checkpoints import STEP_PREFIX, TINY

RESULTS_JSON = "results.json"
TABLES_DIR = "tables"
SAMPLES_DIR = "samples"


# ------------------------------------------------------------------------------------------------ per sample


def parse_failure(row: Mapping) -> str | None:
    """Why a scored row's output gave no answer (None when it parsed)."""
    if row.get("parsed") is not None:
        return None
    if not clean(row.get("output")):
        return "empty output (nothing after the latent segment)"
    if row.get("finish_reason") == "length":
        return "truncated at max_new_tokens before an answer"
    span = answer_span(row.get("output"))
    kind = row.get("kind")
    if kind == "mc":
        return f"no option letter or option text in the answer span {span[:60]!r}"
    if kind == "yesno":
        return f"no yes/no in the answer span {span[:60]!r}"
    return f"no answer text in the answer span {span[:60]!r}"


def sample_record(row: Mapping, sample: Sample | None) -> dict:
    return {
        "question_id": row["sample_id"], "benchmark": row["benchmark"], "model": row.get("model"),
        "k_latent": row.get("k_latent"), "variant": row.get("variant"), "ablation": row.get("ablation"),
        "question": sample.question if sample else None, "options": [list(o) for o in row.get("options") or []],
        "kind": row.get("kind"), "gold": row.get("answer"), "raw_output": row.get("output"),
        "parsed": row.get("parsed"), "correct": bool(row.get("correct")), "parse_failure": parse_failure(row),
    }


def samples_path(out_dir: Path, job: Job) -> Path:
    pred = pred_path(out_dir, job)
    return Path(out_dir) / SAMPLES_DIR / pred.relative_to(Path(out_dir) / "predictions")


def write_sample_records(cfg: EvalConfig, samples: Mapping[str, Sequence[Sample]],
                         scored: Mapping[Job, Sequence[Mapping]]) -> list[Path]:
    by_bench = {b: {s.sample_id: s for s in v} for b, v in samples.items()}
    paths = []
    for job, rows in scored.items():
        path = samples_path(cfg.out_dir, job)
        recs = [sample_record(r, by_bench.get(job.benchmark, {}).get(str(r["sample_id"]))) for r in rows]
        _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ model identity


def model_identity(spec: ModelSpec) -> dict:
    ident = {"name": spec.name, "variant": spec.label, "k_latent": spec.k_latent, "prompt_style": spec.prompt_style}
    if spec.endpoint is not None:
        return {**ident, "kind": "endpoint", "base_url": spec.endpoint.base_url, "model": spec.endpoint.model}
    if spec.path == TINY:
        return {**ident, "kind": "tiny", "tiny_seed": spec.tiny_seed}
    path = Path(spec.path)
    steps = [int(p[len(STEP_PREFIX):]) for p in path.parts if re.fullmatch(rf"{STEP_PREFIX}\d+", p)]
    return {**ident, "kind": "checkpoint", "path": str(path), "step": steps[-1] if steps else None,
            "sha256": weights_sha256(path)}


def weights_sha256(model_dir: Path) -> str | None:
    """sha256 over the weight files (`*.safetensors`, sorted by name; name and bytes), None when there are none."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ tables


def table_files(sections: Sequence[Section]) -> list[tuple[Section, Table, str]]:
    """(section, table, `tables/NN_<slug>.csv`) for every table of the report, in report order; sets each
    table's `csv` link."""
    out = []
    for sec in sections:
        for t in sec.tables:
            slug = re.sub(r"[^a-z0-9]+", "_", f"{sec.title} {t.caption}".lower()).strip("_")[:60]
            t.csv = f"{TABLES_DIR}/{len(out) + 1:02d}_{slug}.csv"
            out.append((sec, t, t.csv))
    return out


def cell_value(cell: str):
    """A report cell as JSON: a number where the report shows one, null for "–", else the text."""
    if cell == NO_VALUE:
        return None
    try:
        return int(cell) if re.fullmatch(r"-?\d+", cell) else float(cell)
    except ValueError:
        return cell


def links_section(n_tables: int) -> Section:
    return Section("Machine-readable results", (
        f"Every table above as CSV ({n_tables} files under {TABLES_DIR}/, linked from each caption), all of their "
        f"numbers with the config and the model identities in {RESULTS_JSON}, and one record per scored sample "
        f"(question, options, gold answer, raw output, parsed answer, correctness, parse-failure reason) under "
        f"{SAMPLES_DIR}/."), links=[(RESULTS_JSON, RESULTS_JSON), (f"{TABLES_DIR}/", f"{TABLES_DIR}/"),
                                    (f"{SAMPLES_DIR}/", f"{SAMPLES_DIR}/")])


def tables_markdown(doc: Mapping, skip_sections: Sequence[str] = ("Setup",)) -> str:
    """The tables of a results.json document as Markdown (a `## ` heading per report section, each table with its
    caption), without the CSV links: what a viewer that cannot open files next to the report can show."""
    out, section = [], None
    for t in doc.get("tables", []):
        if t["section"] in skip_sections:
            continue
        if t["section"] != section:
            section = t["section"]
            out += [f"## {section}", ""]
        rows = [[NO_VALUE if c is None else str(c) for c in r] for r in t["rows"]]
        out += table_markdown(Table(t["caption"], list(t["columns"]), rows), csv_link=False)
    return "\n".join(out)


def write_results(cfg: EvalConfig, sections: Sequence[Section], sample_files: Sequence[Path]) -> Path:
    """The CSV per table and results.json (call `table_files` on the sections first, before rendering)."""
    out_dir = Path(cfg.out_dir)
    tables = []
    for sec, t, rel in table_files(sections):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(t.headers)
        writer.writerows(t.rows)
        _atomic_write(out_dir / rel, buf.getvalue())
        tables.append({"name": Path(rel).stem, "section": sec.title, "caption": t.caption, "csv": rel,
                       "columns": list(t.headers), "rows": [[cell_value(str(c)) for c in r] for r in t.rows]})
    protocol = get_protocol(cfg.protocol)
    doc = {"title": cfg.title, "protocol": {"name": protocol.name, "description": protocol.description},
           "config": config_to_dict(cfg), "models": [model_identity(m) for m in cfg.models],
           "tables": tables, "samples": [str(Path(p).relative_to(out_dir)) for p in sample_files]}
    path = out_dir / RESULTS_JSON
    _atomic_write(path, json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)

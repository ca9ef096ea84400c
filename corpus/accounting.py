"""Object accounting of one ingested dataset, read back from its published tables (docs/datasets.md, "Every
source object accounted for").

The invariant: every annotation object an adapter found (a box row, an XML object, a nodule read, a component of a
label in a mask or volume) ends as written boxes (rows of rois.parquet naming it in `source_object`) or as ROI
reject rows with a reason (rejects.parquet, level "roi"). `reconcile` recomputes the counts from the tables and
compares them with summary.json; it is what the blocking Dagster check `objects_reconcile` and `medlvr catalog
check` run. A problem is one plain dict: what is wrong and an example, never an image or a patient value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

# slice roles and attributes of an image that had annotation objects (must end with a box or be rejected)
ANNOTATED_ROLES = ("annotated", "key", "extra")


def object_outcomes(rois: list[dict], roi_rejects: list[dict]) -> dict[str, str]:
    """{source object: "written" or the reason of its first reject row}, from the tables' rows."""
    out = {r["source_object"]: "written" for r in rois}
    for r in roi_rejects:
        out.setdefault(r["source_object"], r["reason"])
    return out


def reconcile(ingest_dir: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Problems of one dataset's ingest folder (images/rois/rejects.parquet + summary.json) and its counts."""
    ingest_dir = Path(ingest_dir)
    summary = json.loads((ingest_dir / "summary.json").read_text())
    rois = pq.read_table(ingest_dir / "rois.parquet", columns=["image_id", "source_object"]).to_pylist()
    rejects = pq.read_table(ingest_dir / "rejects.parquet",
                            columns=["level", "reason", "source_object"]).to_pylist()
    images = pq.read_table(ingest_dir / "images.parquet", columns=["image_id", "attributes"]).to_pylist()
    roi_rejects = [r for r in rejects if r["level"] == "roi"]
    problems: list[dict[str, Any]] = []

    def problem(what: str, example: Any = "") -> None:
        problems.append({"problem": what, "example": str(example)[:200]})

    if nameless := [r for r in rois if not r["source_object"]]:
        problem(f"{len(nameless)} ROI row(s) without source_object", nameless[0]["image_id"])
    if nameless := [r for r in roi_rejects if not r["source_object"] or not r["reason"]]:
        problem(f"{len(nameless)} ROI reject row(s) without source_object or reason", nameless[0]["reason"])
    outcomes = object_outcomes(rois, roi_rejects)
    written = sum(v == "written" for v in outcomes.values())
    counts = {"objects": len(outcomes), "written": written, "rejected": len(outcomes) - written,
              "lost": int(summary.get("objects_lost", 0))}
    if counts["lost"]:
        problem(f"{counts['lost']} object(s) found by the adapter with neither a box nor a reject row",
                (summary.get("objects_lost_examples") or [""])[0])
    for key, have in (("objects_in", len(outcomes) + counts["lost"]), ("objects_out", written),
                      ("rois_out", len(rois)), ("rois_rejected", len(roi_rejects))):
        if key not in summary:
            problem(f"summary.json has no {key} (written before object accounting: ingest again)")
        elif summary[key] != have:
            problem(f"summary.json says {key}={summary[key]} but the tables hold {have}")
    boxed = {r["image_id"] for r in rois}
    empty = []
    for im in images:
        attrs = json.loads(im["attributes"] or "{}")
        if attrs.get("slice_role") in ANNOTATED_ROLES and im["image_id"] not in boxed:
            empty.append(im["image_id"])
    if empty:
        problem(f"{len(empty)} image(s) marked annotated with no ROI (neither a box, a negative nor a reject)",
                empty[0])
    return problems, counts

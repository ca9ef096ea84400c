"""Test helpers: write one sample dataset, ingest it, and check exact box recovery against the truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import DatasetSummary, IngestConfig, ingest_dataset
from medlvr.corpus.normalize import Geometry
from medlvr.corpus.sample_data import load_truth, write_samples


@dataclass
class Ingested:
    summary: DatasetSummary
    data_root: Path
    out_dir: Path
    truth: list[dict]

    def table(self, name: str):
        return pq.read_table(self.out_dir / self.summary.dataset / f"{name}.parquet")


def ingest_sample(tmp_path: Path, dataset_id: str, cfg: IngestConfig | None = None) -> Ingested:
    data_root, out_dir = tmp_path / "data", tmp_path / "out"
    write_samples(data_root, [dataset_id], seed=0)
    spec = load_catalog()[dataset_id]
    summary = ingest_dataset(spec, data_root / dataset_id, out_dir, cfg or IngestConfig(patient_salt="test-salt"))
    return Ingested(summary, data_root, out_dir, load_truth(data_root, dataset_id))


def assert_truth_recovered(ing: Ingested, tol: float = 1e-6) -> int:
    """Every true box is found, with its label, on an image of its source (and suffix), both as the stored
    original box and by mapping the normalised box back through the recorded scale and padding."""
    images = ing.table("images").drop_columns(["png"]).to_pylist()
    rois = ing.table("rois").to_pylist()
    by_image: dict[str, list[dict]] = {}
    for r in rois:
        by_image.setdefault(r["image_id"], []).append(r)
    problems, checked = [], 0
    for t in ing.truth:
        cands = [im for im in images if im["source_path"] == t["source_path"]
                 and (t.get("suffix") is None or im["suffix"] == t["suffix"])]
        if not cands:
            problems.append(f"no image for {t['source_path']} suffix={t.get('suffix')}")
            continue
        for label, box in t["boxes"]:
            ok = False
            for im in cands:
                geo = Geometry(im["orig_width"], im["orig_height"], im["width"], im["height"], im["scale_x"],
                               im["scale_y"], tuple(im["pad"]))
                for r in by_image.get(im["image_id"], []):
                    if r["label"] != label:
                        continue
                    back = geo.to_original(r["box"])
                    if all(abs(a - b) <= tol for a, b in zip(r["box_orig"], box)) and \
                            all(abs(a - b) <= tol for a, b in zip(back, box)):
                        ok = True
                        break
                if ok:
                    break
            checked += 1
            if not ok:
                got = [(r["label"], [round(v, 2) for v in r["box_orig"]]) for im in cands
                       for r in by_image.get(im["image_id"], [])]
                problems.append(f"{t['source_path']}#{t.get('suffix')}: {label} {box} not found; got {got}")
    assert not problems, "\n".join(problems)
    assert checked > 0, "truth had no boxes"
    return checked


def assert_reconciles(s: DatasetSummary) -> None:
    assert s.records_in == s.records_out + s.records_rejected, s


def assert_objects_accounted(ing: Ingested) -> dict[str, str]:
    """The object invariant read from the tables themselves (not the summary's own counts): every object named by
    an ROI row or an ROI reject row is either written or rejected with a reason, the summary counts the same
    objects, and no object is lost. Returns {object: outcome} ('written' or the first reject reason)."""
    rois = ing.table("rois").to_pylist()
    rejects = [r for r in ing.table("rejects").to_pylist() if r["level"] == "roi"]
    assert all(r["source_object"] for r in rois), "an ROI row without source_object"
    assert all(r["source_object"] for r in rejects), [r for r in rejects if not r["source_object"]][:3]
    assert all(r["reason"] for r in rejects)
    outcome = {r["source_object"]: "written" for r in rois}
    for r in rejects:
        outcome.setdefault(r["source_object"], r["reason"])
    s = ing.summary
    assert s.objects_lost == 0, (s.objects_lost, s.objects_lost_examples)
    assert s.objects_in == s.objects_out + s.objects_rejected, s
    assert s.objects_out == sum(v == "written" for v in outcome.values()), (s.objects_out, s.object_outcomes)
    assert s.objects_in == len(outcome), (s.objects_in, len(outcome), s.object_outcomes)
    assert s.rois_out == len(rois) and s.rois_rejected == len(rejects)
    for key in outcome:  # relative paths only
        assert not key.startswith("/") and str(ing.data_root) not in key, key
    return outcome

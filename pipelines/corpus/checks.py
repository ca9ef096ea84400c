"""Blocking asset checks: a failing check stops the downstream assets of the same run. Per-dataset checks are
partitioned like their asset (`partitions_def=DATASET_PARTITIONS`), so they read only their dataset's files."""


import json

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medlvr.corpus import layout
from medlvr.corpus.accounting import reconcile
from medlvr.corpus.build import publish_datasets
from medlvr.corpus.shards import verify_manifest
from medlvr.pipelines.corpus.metadata import md_table, read_manifest
from medlvr.pipelines.corpus.partitions import DATASET_PARTITIONS
from medlvr.pipelines.corpus.resources import CorpusSettings, CorpusStorage


def _result(problems: list[dict], checked: int, **meta) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"checked": checked, "failures": len(problems),
                                         "examples": md_table(problems[:10]), **meta})


@dg.asset_check(asset="roi_annotations", blocking=True, partitions_def=DATASET_PARTITIONS,
                description="Every box lies inside its image (0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height).")
def boxes_inside_images(context: dg.AssetCheckExecutionContext, storage: CorpusStorage) -> dg.AssetCheckResult:
    ds = context.partition_key
    with storage.workdir(pull_paths=[layout.ingest(ds)]) as out:
        sizes = pq.read_table(out / layout.images(ds), columns=["image_id", "width", "height"])
        rois = pq.read_table(out / layout.rois(ds), columns=["image_id", "roi_index", "label", "box"])
    size = {i: (w, h) for i, w, h in zip(*(sizes.column(c).to_pylist() for c in ("image_id", "width", "height")))}
    bad = []
    for r in rois.to_pylist():
        w, h = size.get(r["image_id"], (0, 0))
        x0, y0, x1, y1 = r["box"]
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            bad.append({**r, "width": w, "height": h})
    return _result(bad, rois.num_rows)


@dg.asset_check(asset="roi_annotations", blocking=True, partitions_def=DATASET_PARTITIONS,
                description="Every source annotation object is accounted for: ROIs written + ROI reject rows name "
                            "every object the adapter found, the tables agree with summary.json, and no image "
                            "marked annotated is left without a box.")
def objects_reconcile(context: dg.AssetCheckExecutionContext, storage: CorpusStorage) -> dg.AssetCheckResult:
    ds = context.partition_key
    with storage.workdir(pull_paths=[layout.ingest(ds)]) as out:
        problems, counts = reconcile(out / layout.ingest(ds))
    return _result(problems, counts["objects"], **{f"objects_{k}": v for k, v in counts.items() if k != "objects"})


@dg.asset_check(asset="normalized_images", blocking=True, partitions_def=DATASET_PARTITIONS,
                description="The dataset produced images, and none is empty (zero size or no PNG bytes).")
def no_empty_images(context: dg.AssetCheckExecutionContext, storage: CorpusStorage) -> dg.AssetCheckResult:
    ds = context.partition_key
    with storage.workdir(pull_paths=[layout.images(ds)]) as out:
        t = pq.read_table(out / layout.images(ds), columns=["image_id", "width", "height", "png"])
    empty = pc.or_(pc.or_(pc.less_equal(t["width"], 0), pc.less_equal(t["height"], 0)),
                   pc.less_equal(pc.binary_length(t["png"]), 0))
    bad = t.select(["image_id", "width", "height"]).filter(empty).to_pylist()
    if t.num_rows == 0:
        bad = [{"image_id": None, "problem": "the dataset produced no image"}]
    return _result(bad, t.num_rows)


@dg.asset_check(asset="normalized_images", blocking=True, partitions_def=DATASET_PARTITIONS,
                description="Rejected records stay below `corpus_settings.max_reject_share` of the records read.")
def rejects_below_share(context: dg.AssetCheckExecutionContext, storage: CorpusStorage,
                        corpus_settings: CorpusSettings) -> dg.AssetCheckResult:
    ds = context.partition_key
    with storage.workdir(pull_paths=[layout.ingest_summary(ds)]) as out:
        s = json.loads((out / layout.ingest_summary(ds)).read_text())
    share = s["records_rejected"] / max(1, s["records_in"])
    ok = share <= corpus_settings.max_reject_share
    return dg.AssetCheckResult(passed=ok, severity=dg.AssetCheckSeverity.ERROR, metadata={
        "reject_share": round(share, 4), "max_reject_share": corpus_settings.max_reject_share,
        "records_in": s["records_in"], "records_rejected": s["records_rejected"],
        "top_reasons": dg.MetadataValue.json(s["reasons"])})


@dg.asset_check(asset="splits", blocking=True,
                description="No patient (per dataset) and no duplicate group appears in two splits.")
def no_patient_or_group_across_splits(storage: CorpusStorage) -> dg.AssetCheckResult:
    with storage.workdir(pull_paths=[layout.INGEST, layout.DATASETS, layout.SPLITS, layout.DUP_GROUPS]) as out:
        ids = publish_datasets(out)
        split = pq.read_table(out / layout.SPLITS)
        groups = pq.read_table(out / layout.DUP_GROUPS)
        images = pa.concat_tables(pq.read_table(out / layout.images(d),
                                                columns=["image_id", "dataset", "patient_key"]) for d in ids)
    t = images.join(split, "image_id").join(groups, "image_id", join_type="left outer")
    bad = []
    for keys, kind in ((["dataset", "patient_key"], "patient"), (["dup_group"], "duplicate group")):
        agg = t.filter(pc.is_valid(t[keys[-1]])).group_by(keys).aggregate([("split", "count_distinct")])
        for r in agg.filter(pc.greater(agg["split_count_distinct"], 1)).to_pylist():
            bad.append({"kind": kind, "key": "/".join(str(r[k]) for k in keys), "splits": r["split_count_distinct"]})
    return _result(bad, t.num_rows, images_without_split=images.num_rows - t.num_rows)


@dg.asset_check(asset="corpus_shards", blocking=True,
                description="Every shard's sha256 and row count match the shard manifest, and no unlisted shard.")
def shard_checksums_match_manifest(storage: CorpusStorage) -> dg.AssetCheckResult:
    with storage.workdir(pull_paths=[layout.SHARDS]) as out:
        try:
            problems = verify_manifest(out / layout.SHARDS)
        except Exception as e:  # an unreadable shard fails the check instead of erroring it
            problems = [f"{type(e).__name__}: {e}"]
        n = len(read_manifest(out / layout.SHARDS)["shards"])
    return _result([{"problem": p} for p in problems], n)


@dg.asset_check(asset="corpus_shards", blocking=True,
                description="Zero decontamination matches left: no image listed in work/contaminated.parquet is in "
                            "the shards.")
def zero_decontamination_matches_left(storage: CorpusStorage) -> dg.AssetCheckResult:
    import pyarrow.dataset as pads

    with storage.workdir(pull_paths=[layout.SHARDS, layout.CONTAMINATED]) as out:
        bad_ids = pa.array(pq.read_table(out / layout.CONTAMINATED, columns=["image_id"])["image_id"]
                           .to_pylist(), pa.string())
        shards = pads.dataset(sorted(str(p) for p in (out / layout.SHARDS).rglob("*.parquet")), format="parquet")
        left = shards.to_table(columns=["image_id", "dataset", "split"],
                               filter=pads.field("image_id").isin(bad_ids)).to_pylist()
    return _result(left, shards.count_rows(), contaminated_images=len(bad_ids))


CORPUS_CHECKS = [boxes_inside_images, objects_reconcile, no_empty_images, rejects_below_share, no_patient_or_group_across_splits,
                 shard_checksums_match_manifest, zero_decontamination_matches_left]

"""Sensors (both start STOPPED; switch them on in the UI under Automation).

* `raw_dataset_sensor` requests a `corpus_dataset_job` run of a dataset's partition when files under its raw
  folder are added, removed, renamed or modified. Cursor: {dataset: `quick_folder_fingerprint`}: the modification
  times of every directory (adding, removing or renaming a file changes its directory's) plus size and mtime of a
  fixed sample of files, so a tick stats directories and a few hundred files, never every file (a root of 100,000
  files: benchmarks/bench_sensor.py, benchmarks/RESULTS.md). An in-place rewrite of a file outside the sample
  is seen by the run's `raw_dataset` asset (its data version fingerprints every file), not by the sensor.
  Its first evaluation only records the fingerprints.
* `corpus_publish_sensor` requests `corpus_publish_job` once every selected dataset's `qa_pairs` partition was
  materialised after the latest `corpus_shards`, and none of the partitions or assets it depends on is being
  rebuilt: it looks at the runs that planned the latest materialisation of each selected `qa_pairs` partition and
  of each publish asset, and skips only while one of those is queued or in progress. Unrelated runs (training,
  evaluation, other datasets) do not hold it back.
"""


import json

import dagster as dg

from medlvr.pipelines.code_version import quick_folder_fingerprint
from medlvr.pipelines.corpus.assets import CORPUS_ASSETS
from medlvr.pipelines.corpus.jobs import corpus_dataset_job, corpus_publish_job
from medlvr.pipelines.corpus.resources import DatasetRoots


@dg.sensor(name="raw_dataset_sensor", job=corpus_dataset_job, minimum_interval_seconds=600,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Runs a dataset's partition when files in its raw folder are new or modified.")
def raw_dataset_sensor(context: dg.SensorEvaluationContext, dataset_roots: DatasetRoots):
    prints = {d: quick_folder_fingerprint(r) for d in dataset_roots.selected()
              if (r := dataset_roots.root(d, materialise_samples=False)).is_dir()}
    if context.cursor is None:
        context.update_cursor(json.dumps(prints, sort_keys=True))
        return dg.SkipReason(f"recorded fingerprints of {len(prints)} dataset folders")
    before = json.loads(context.cursor)
    changed = sorted(d for d, fp in prints.items() if before.get(d) != fp)
    context.update_cursor(json.dumps(prints, sort_keys=True))
    if not changed:
        return dg.SkipReason("no raw dataset folder changed")
    return [dg.RunRequest(run_key=f"{d}:{prints[d]}", partition_key=d, tags={"medlvr/trigger": "raw_change"})
            for d in changed]


def _latest_storage_id(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> int | None:
    f = dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None)
    recs = instance.fetch_materializations(f, limit=1).records
    return recs[0].storage_id if recs else None


IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# the unpartitioned assets corpus_publish_job materialises (dedup_groups ... corpus_card)
PUBLISH_ASSETS = sorted(k for a in CORPUS_ASSETS for k in a.keys if a.group_names_by_key[k] == "corpus_publish")


def _busy(instance: dg.DagsterInstance, targets: list[tuple[dg.AssetKey, str | None]]) -> list[str]:
    """The targets (asset, partition) whose latest planned materialisation belongs to a run still queued or in
    progress. Dagster logs a planned event for every asset partition a run will materialise when the run is
    created, so a queued run counts before it starts."""
    planned = {}
    for key, partition in targets:
        info = instance.get_latest_planned_materialization_info(key, partition)
        if info is not None:
            planned[(key, partition)] = info.run_id
    if not planned:
        return []
    active = {r.run_id for r in instance.get_runs(dg.RunsFilter(run_ids=sorted(set(planned.values())),
                                                                statuses=IN_PROGRESS))}
    return [f"{k.to_user_string()}[{p}]" if p else k.to_user_string()
            for (k, p), run_id in planned.items() if run_id in active]


@dg.sensor(name="corpus_publish_sensor", job=corpus_publish_job, minimum_interval_seconds=120,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Publishes (dedup -> splits -> shards -> card) once all selected datasets have fresh QA pairs.")
def corpus_publish_sensor(context: dg.SensorEvaluationContext, dataset_roots: DatasetRoots):
    inst = context.instance
    selected = dataset_roots.selected()
    busy = _busy(inst, [(dg.AssetKey("qa_pairs"), d) for d in selected] + [(k, None) for k in PUBLISH_ASSETS])
    if busy:
        return dg.SkipReason(f"{len(busy)} input(s) being rebuilt by a queued or running run: {busy[:5]}")
    last_shards = _latest_storage_id(inst, "corpus_shards") or 0
    ids = {d: _latest_storage_id(inst, "qa_pairs", d) for d in selected}
    stale = sorted(d for d, sid in ids.items() if sid is None or sid <= last_shards)
    if stale:
        return dg.SkipReason(f"{len(stale)} dataset(s) without QA pairs newer than the shards: {stale[:5]}")
    newest = max(ids.values())
    return dg.RunRequest(run_key=f"publish:{newest}", tags={"medlvr/trigger": "datasets_rebuilt"})


CORPUS_SENSORS = [raw_dataset_sensor, corpus_publish_sensor]

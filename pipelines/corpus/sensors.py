"""Sensors (both start STOPPED; switch them on in the UI under Automation).

* `raw_dataset_sensor` requests a `corpus_dataset_job` run of a dataset's partition when files under its raw
  folder are added, removed or modified. Cursor: {dataset: fingerprint of (path, size, mtime) of every file}.
  Its first evaluation only records the fingerprints. A scan walks every file, hence the 10-minute interval.
* `corpus_publish_sensor` requests `corpus_publish_job` once every selected dataset's `qa_pairs` partition was
  materialised after the latest `corpus_shards`, and no run at all is queued or in progress (once long training
  runs exist, exclude them here by tag).
"""


import json

import dagster as dg

from medlvr.pipelines.code_version import folder_fingerprint
from medlvr.pipelines.corpus.jobs import corpus_dataset_job, corpus_publish_job
from medlvr.pipelines.corpus.resources import DatasetRoots


@dg.sensor(name="raw_dataset_sensor", job=corpus_dataset_job, minimum_interval_seconds=600,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Runs a dataset's partition when files in its raw folder are new or modified.")
def raw_dataset_sensor(context: dg.SensorEvaluationContext, dataset_roots: DatasetRoots):
    prints = {d: folder_fingerprint(r) for d in dataset_roots.selected()
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


@dg.sensor(name="corpus_publish_sensor", job=corpus_publish_job, minimum_interval_seconds=120,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Publishes (dedup -> splits -> shards -> card) once all selected datasets have fresh QA pairs.")
def corpus_publish_sensor(context: dg.SensorEvaluationContext, dataset_roots: DatasetRoots):
    inst = context.instance
    active = inst.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                                         dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    if active:
        return dg.SkipReason(f"{active} run(s) queued or in progress")
    last_shards = _latest_storage_id(inst, "corpus_shards") or 0
    ids = {d: _latest_storage_id(inst, "qa_pairs", d) for d in dataset_roots.selected()}
    stale = sorted(d for d, sid in ids.items() if sid is None or sid <= last_shards)
    if stale:
        return dg.SkipReason(f"{len(stale)} dataset(s) without QA pairs newer than the shards: {stale[:5]}")
    newest = max(ids.values())
    return dg.RunRequest(run_key=f"publish:{newest}", tags={"medlvr/trigger": "datasets_rebuilt"})


CORPUS_SENSORS = [raw_dataset_sensor, corpus_publish_sensor]

"""Weekly corpus rebuild (starts STOPPED; switch it on in the UI: Automation -> weekly_corpus_rebuild, with the
daemon running, which `dagster dev` does).

The schedule launches one `corpus_dataset_job` run per selected dataset (a run per partition, so a broken dataset
fails alone). The publish run follows through `corpus_publish_sensor` (sensors.py): it fires once every selected
dataset's `qa_pairs` is newer than the last shards and no run is queued or in progress. Switch both on.
"""

import dagster as dg

from medlvr.pipelines.corpus.jobs import corpus_dataset_job
from medlvr.pipelines.corpus.resources import DatasetRoots

WEEKLY_CRON = "0 2 * * 0"  # Sundays 02:00 (execution_timezone below)


@dg.schedule(name="weekly_corpus_rebuild", cron_schedule=WEEKLY_CRON, execution_timezone="UTC",
             job=corpus_dataset_job, default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Weekly: one run per dataset partition (raw -> ingest -> QA); the publish sensor then "
                         "builds the shards.")
def weekly_corpus_rebuild(context: dg.ScheduleEvaluationContext, dataset_roots: DatasetRoots):
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H%M") if context.scheduled_execution_time else "manual"
    present = [d for d in dataset_roots.selected()
               if dataset_roots.uses_samples or dataset_roots.root(d, materialise_samples=False).is_dir()]
    if not present:
        return dg.SkipReason("no selected dataset has a folder under the configured data root")
    return [dg.RunRequest(run_key=f"{d}:{tick}", partition_key=d, tags={"medlvr/trigger": "weekly"})
            for d in present]


CORPUS_SCHEDULES = [weekly_corpus_rebuild]

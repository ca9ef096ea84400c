"""The weekly schedule and the sensors, evaluated without a daemon."""

import datetime as dt
import os
import time

import dagster as dg
import pytest

from medlvr.pipelines.corpus.resources import DatasetRoots
from medlvr.pipelines.corpus.schedules import weekly_corpus_rebuild
from medlvr.pipelines.corpus.sensors import corpus_publish_sensor, raw_dataset_sensor
from tests.catalog_count import N_DATASETS


def _repo():
    from medlvr.pipelines.definitions import defs

    return defs.get_repository_def()


def test_weekly_schedule_one_run_per_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLVR_HOME", str(tmp_path))
    monkeypatch.delenv("MEDLVR_DATA_ROOT", raising=False)
    assert weekly_corpus_rebuild.cron_schedule == "0 2 * * 0"
    when = dt.datetime(2026, 11, 22, 2, 0, tzinfo=dt.timezone.utc)
    with dg.build_schedule_context(scheduled_execution_time=when, repository_def=_repo(),
                                   resources={"dataset_roots": DatasetRoots()}) as ctx:
        reqs = weekly_corpus_rebuild.evaluate_tick(ctx).run_requests
    assert len(reqs) == N_DATASETS and len({r.partition_key for r in reqs}) == N_DATASETS
    assert all(r.run_key.endswith("2026-11-22T0200") for r in reqs)
    # with a real data root only the datasets present there are requested
    (tmp_path / "data" / "busi").mkdir(parents=True)
    with dg.build_schedule_context(scheduled_execution_time=when, repository_def=_repo(), resources={
            "dataset_roots": DatasetRoots(data_root=str(tmp_path / "data"), datasets=["busi", "hc18"])}) as ctx:
        reqs = weekly_corpus_rebuild.evaluate_tick(ctx).run_requests
    assert [r.partition_key for r in reqs] == ["busi"]


@pytest.fixture
def data(tmp_path):
    from medlvr.corpus.sample_data import write_samples

    write_samples(tmp_path / "data", ["busi", "hc18"])
    return tmp_path / "data"


def _tick(sensor, roots, cursor):
    with dg.build_sensor_context(cursor=cursor, resources={"dataset_roots": roots}) as ctx:
        return sensor(ctx), ctx.cursor


def test_raw_dataset_sensor_fires_on_change_only(data):
    roots = DatasetRoots(data_root=str(data), datasets=["busi", "hc18", "kits23"])
    res, cursor = _tick(raw_dataset_sensor, roots, None)  # first tick: baseline, no run
    assert isinstance(res, dg.SkipReason) and cursor
    res, cursor2 = _tick(raw_dataset_sensor, roots, cursor)  # nothing changed
    assert isinstance(res, dg.SkipReason) and cursor2 == cursor
    # a new file in one dataset
    (data / "busi" / "Dataset_BUSI_with_GT" / "benign" / "extra note.txt").write_text("new")
    res, cursor3 = _tick(raw_dataset_sensor, roots, cursor2)
    assert [r.partition_key for r in res] == ["busi"]
    res, cursor4 = _tick(raw_dataset_sensor, roots, cursor3)  # same state again: no run
    assert isinstance(res, dg.SkipReason)
    # a modified file (same size, new mtime) in the other dataset
    f = next(p for p in sorted((data / "hc18").rglob("*")) if p.is_file())
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    res, cursor5 = _tick(raw_dataset_sensor, roots, cursor4)
    assert [r.partition_key for r in res] == ["hc18"]
    # a dataset folder that appears counts as new
    from medlvr.corpus.sample_data import write_samples

    write_samples(data, ["kits23"])
    res, _ = _tick(raw_dataset_sensor, roots, cursor5)
    assert [r.partition_key for r in res] == ["kits23"]
    assert len({r.run_key for r in res}) == len(res)


def test_publish_sensor_waits_for_every_dataset():
    roots = DatasetRoots(datasets=["busi", "hc18"])
    with dg.instance_for_test() as instance:
        def tick():
            with dg.build_sensor_context(instance=instance, resources={"dataset_roots": roots}) as ctx:
                return corpus_publish_sensor(ctx)

        assert isinstance(tick(), dg.SkipReason)
        instance.report_runless_asset_event(dg.AssetMaterialization("qa_pairs", partition="busi"))
        assert isinstance(tick(), dg.SkipReason)  # hc18 not rebuilt yet
        instance.report_runless_asset_event(dg.AssetMaterialization("qa_pairs", partition="hc18"))
        req = tick()
        assert isinstance(req, dg.RunRequest) and req.run_key.startswith("publish:")
        instance.report_runless_asset_event(dg.AssetMaterialization("corpus_shards"))
        assert isinstance(tick(), dg.SkipReason)  # published: nothing newer than the shards


def _many_files(root, dirs=3, per_dir=1000):
    for i in range(dirs):
        d = root / "busi" / f"part{i}"
        d.mkdir(parents=True)
        for j in range(per_dir):
            (d / f"img{j:04d}.png").write_bytes(b"x")
    return root / "busi"


def test_raw_dataset_sensor_tick_stats_directories_and_a_sample(tmp_path, monkeypatch):
    """A tick costs a stat per directory and per sampled file, not one per file (the old sensor statted all 3,000);
    adding, removing or renaming any file and rewriting a sampled one still fire."""
    from medlvr.pipelines.code_version import SAMPLED_FILES

    busi = _many_files(tmp_path)
    roots = DatasetRoots(data_root=str(tmp_path), datasets=["busi"])
    _, cursor = _tick(raw_dataset_sensor, roots, None)
    calls = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):  # the data folder's stats, not Dagster's own
            calls.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    res, cursor = _tick(raw_dataset_sensor, roots, cursor)
    monkeypatch.setattr(os, "stat", real_stat)
    assert isinstance(res, dg.SkipReason)
    assert 0 < len(calls) <= SAMPLED_FILES + 4 + 10, len(calls)  # 4 directories, a few for the root lookup

    def fires(change) -> bool:
        nonlocal cursor
        change()
        res, cursor = _tick(raw_dataset_sensor, roots, cursor)
        return not isinstance(res, dg.SkipReason) and [r.partition_key for r in res] == ["busi"]

    unsampled = busi / "part1" / "img0501.png"  # not among the 256 evenly spaced files the sample takes
    assert fires(lambda: (busi / "part1" / "new.png").write_bytes(b"y"))
    assert fires(lambda: (busi / "part2" / "img0007.png").unlink())
    assert fires(lambda: unsampled.rename(busi / "part1" / "renamed.png"))
    first = busi / "part0" / "img0000.png"  # the first file of the listing is always sampled
    assert fires(lambda: os.utime(first, ns=(time.time_ns(), time.time_ns() + 7_000_000_000)))
    assert not fires(lambda: None)


def _created_run(instance, job_name, partition=None, status=dg.DagsterRunStatus.NOT_STARTED):
    """A run created with its execution plan, so Dagster logs its planned materialisations (as it does for a run the
    queue holds; QUEUED itself needs a code location origin)."""
    from medlvr.pipelines.definitions import defs

    job = defs.resolve_job_def(job_name)
    tags = {"dagster/partition": partition} if partition else {}
    return instance.create_run_for_job(job, status=status, tags=tags)


def test_publish_sensor_ignores_unrelated_runs_and_waits_for_its_inputs():
    roots = DatasetRoots(datasets=["busi", "hc18"])
    with dg.instance_for_test() as instance:
        def tick():
            with dg.build_sensor_context(instance=instance, resources={"dataset_roots": roots}) as ctx:
                return corpus_publish_sensor(ctx)

        for ds in ("busi", "hc18"):
            instance.report_runless_asset_event(dg.AssetMaterialization("qa_pairs", partition=ds))
        # an unrelated run in progress (evaluation) and another dataset's rebuild waiting: publish anyway
        _created_run(instance, "evaluation_report_job", status=dg.DagsterRunStatus.STARTED)
        _created_run(instance, "corpus_dataset_job", "kits23")
        assert isinstance(tick(), dg.RunRequest)
        # a rebuild of a selected dataset not started yet: wait for it
        run = _created_run(instance, "corpus_dataset_job", "busi")
        res = tick()
        assert isinstance(res, dg.SkipReason) and "qa_pairs[busi]" in res.skip_message
        instance.report_run_failed(run)  # it ended (no new QA pairs): the inputs are quiet again
        assert isinstance(tick(), dg.RunRequest)
        # a publish run in progress: no second one
        publish = _created_run(instance, "corpus_publish_job", status=dg.DagsterRunStatus.STARTED)
        res = tick()
        assert isinstance(res, dg.SkipReason) and "corpus_shards" in res.skip_message
        instance.report_run_canceled(publish)
        assert isinstance(tick(), dg.RunRequest)

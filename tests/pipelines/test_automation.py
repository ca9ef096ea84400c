"""The weekly schedule and the sensors, evaluated without a daemon."""

import datetime as dt
import os
import time

import dagster as dg
import pytest

from medlvr.pipelines.corpus.resources import DatasetRoots
from medlvr.pipelines.corpus.schedules import weekly_corpus_rebuild
from medlvr.pipelines.corpus.sensors import corpus_publish_sensor, raw_dataset_sensor


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
    assert len(reqs) == 31 and len({r.partition_key for r in reqs}) == 31
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

"""The main job on two datasets: the whole graph through Dagster, then reuse, then a partial rerun."""

import os
import shutil
from pathlib import Path

import pytest

from medlvr.pipelines.main_job import run_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO / "pipelines" / "dagster_home" / "dagster.yaml", h / "dagster.yaml")
    old = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "MEDLVR_HOME")}
    os.environ.pop("MEDLVR_HOME", None)
    yield h
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_main_job_runs_everything_then_reuses_then_reruns_what_changed(home):
    import dagster as dg

    first = run_main(home, ["busi", "refuge"], log=lambda *_: None)
    assert not first["failed"] and not first["reused"]
    assert {"corpus_dataset_job[busi]", "corpus_dataset_job[refuge]", "corpus_publish_job", "training_job",
            "evaluation_report_job"} <= set(first["ran"])
    report = Path(first["report"])
    assert report.exists() and "Table 1" in report.with_suffix(".md").read_text()
    instance = dg.DagsterInstance.get()
    for key in ("qa_pairs", "corpus_shards", "roi_sft_checkpoint", "vlpo_checkpoint", "evaluation_report"):
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key

    second = run_main(home, ["busi", "refuge"], log=lambda *_: None)
    assert second["ran"] == [] and set(second["reused"]) == set(first["ran"])

    raw = next(p for p in (Path(first["home"]) / "sample_data" / "busi").rglob("*.png"))
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))  # a modified raw file
    third = run_main(home, ["busi", "refuge"], log=lambda *_: None)
    assert "corpus_dataset_job[busi]" in third["ran"] and "corpus_dataset_job[refuge]" in third["reused"]
    assert "corpus_publish_job" in third["ran"] and "training_job" in third["ran"]

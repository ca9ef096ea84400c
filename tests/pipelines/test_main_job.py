"""The main job on two datasets: the whole graph through Dagster, then reuse, then a partial rerun, then --force;
its runs belong to the code location (the webserver of workspace.yaml lists them on the job pages)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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

    forced = run_main(home, ["busi", "refuge"], force=True, log=lambda *_: None)
    assert forced["reused"] == [] and set(forced["ran"]) == set(first["ran"])


JOB_RUNS = """query JobRuns($job: String!) {
  pipelineOrError(params: {pipelineName: $job, repositoryName: "__repository__", repositoryLocationName: "medlvr"}) {
    __typename ... on Pipeline { runs { runId status tags { key value } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str, variables: dict) -> dict:
    req = urllib.request.Request(f"{base}/graphql", json.dumps({"query": query, "variables": variables}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_main_job_runs_are_listed_on_the_job_pages(home):
    """The runs of the test above, seen through the webserver of workspace.yaml on the same instance: the job page's
    query (runs of the job in repository __repository__@medlvr) lists them."""
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    cmd = [str(Path(sys.executable).with_name("dagster-webserver")), "-w", str(REPO / "workspace.yaml"),
           "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, "dagster-webserver exited"
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=5).close()
                break
            except OSError:
                assert time.time() < deadline, "dagster-webserver did not answer"
                time.sleep(1)
        for job in ("corpus_dataset_job", "corpus_publish_job", "training_job", "evaluation_report_job"):
            res = _graphql(base, JOB_RUNS, {"job": job})
            page = res["data"]["pipelineOrError"]
            assert page["__typename"] == "Pipeline", res
            assert page["runs"] and all(r["status"] == "SUCCESS" for r in page["runs"]), (job, page)
        runs = _graphql(base, JOB_RUNS, {"job": "corpus_dataset_job"})["data"]["pipelineOrError"]["runs"]
        partitions = {t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"}
        assert partitions == {"busi", "refuge"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

"""The main job on two datasets: the whole graph through Dagster, then reuse, then a partial rerun, then --force;
its runs belong to the code location (the webserver of workspace.yaml lists them on the job pages)."""

import os
import re
import sys
from pathlib import Path

import pytest

from dagster import serialize_value

from medlvr.pipelines.console import CLEAR_LINE
from medlvr.pipelines.main_job import run_main
from tests.pipelines.helpers import dagster_server, free_port, graphql
from tests.pipelines.test_console import _read_pty

REPO = Path(__file__).resolve().parents[2]
LEARNED = 90.0  # accuracy % on the synthetic grounding task that counts as learned (chance: 25 %)


@pytest.fixture(scope="module")
def home(main_job_home):
    """The session's main-job home (tests/pipelines/conftest.py: its first run is checked here), as DAGSTER_HOME
    for this module."""
    old = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "MEDLVR_HOME")}
    os.environ["DAGSTER_HOME"] = str(main_job_home.home)
    os.environ.pop("MEDLVR_HOME", None)
    yield main_job_home.home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def report_accuracy(report_md: Path, benchmark: str) -> dict[str, float]:
    """{model: accuracy %} of `benchmark` from the report's "Accuracy per benchmark" table."""
    out = {}
    for line in report_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[1] == benchmark:
            out[cells[0]] = float(cells[3])
    return out


@pytest.mark.slow
def test_main_job_runs_everything_then_reuses_then_reruns_what_changed(home, main_job_home):
    import dagster as dg

    # the first run (the session's main-job home): run_main(home, ["busi", "refuge"], log=lines.append)
    first, lines = main_job_home.first, main_job_home.lines
    assert not first["failed"] and not first["reused"]
    assert {"knowledge_graph_job", "corpus_dataset_job[busi]", "corpus_dataset_job[refuge]", "corpus_publish_job",
            "training_job", "evaluation_report_job"} <= set(first["ran"])
    report = Path(first["report"])
    md = report.with_suffix(".md").read_text()
    assert report.exists() and "Table 1" in md and "it is not a medical model" in md
    # the tiny models learn the synthetic grounding task (chance 25 %); the untrained base does not
    acc = report_accuracy(report.with_suffix(".md"), "synthetic_grounding")
    assert acc["roi_sft"] >= LEARNED and acc["medlvr"] >= LEARNED and acc["base"] < 50, acc
    # the causal latent diagnostics of both latent models, on the task they learned
    diag = md.split("## Latent diagnostics", 1)[1]
    assert "| roi_sft | synthetic_grounding |" in diag and "| medlvr | synthetic_grounding |" in diag, diag[:2000]
    instance = dg.DagsterInstance.get()
    for key in ("knowledge_graph", "qa_pairs", "corpus_shards", "roi_sft_checkpoint", "vlpo_checkpoint",
                "evaluation_report"):
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    # every check of the graph ran in the main job's runs and passed (qa_pairs, training, evaluation included)
    checks = {}
    for run in instance.get_runs():
        for ev in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = ev.dagster_event.event_specific_data
            checks.setdefault(data.check_name, []).append(data.passed)
    assert {"qa_pairs_schema", "qa_answer_among_options", "qa_boxes_inside_images", "roi_sft_checkpoint_loads",
            "roi_sft_checkpoint_metrics_finite", "vlpo_checkpoint_loads", "vlpo_checkpoint_metrics_finite",
            "parse_fail_rate_below_threshold"} <= set(checks)
    assert all(all(v) for v in checks.values()), checks
    # every run it launched says it came from the main job
    assert {run.tags.get("medlvr/launched_by") for run in instance.get_runs()} == {"demo"}
    # small, bounded event history: no image bytes in metadata, each event's metadata capped
    sizes = [len(serialize_value(ev)) for run in instance.get_runs() for ev in instance.all_logs(run.run_id)]
    assert max(sizes) < 64_000 and sum(sizes) < 4_000_000, (max(sizes), sum(sizes))
    # the console: stage lines, no child output (the trainers' JSON lines, library progress bars)
    console = "\n".join(lines) + main_job_home.output  # its log lines and all else on stdout and stderr
    assert '"loss"' not in console and "Loading weights" not in console and "\r" not in console
    assert any(ln.startswith("[training] 1/1 done: 1 ran") for ln in lines), lines
    logs = list((Path(first["home"]) / "runs").glob("*/logs/*.log"))
    assert {p.parent.parent.name for p in logs} == {"roi_sft", "vlpo"}
    summary = {"roi_sft": r"^ROI-SFT: \d+ steps: loss ", "vlpo": r"^VLPO: \d+ steps: "}  # each trainer's last line
    assert all(re.search(summary[p.parent.parent.name], p.read_text(), re.M) for p in logs)

    # on a terminal (a real pty): each stage is one status line rewritten in place, then its summary line
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    second = run_main(home, ["busi", "refuge"], log=lambda line: print(line, file=tty, flush=True), stream=tty)
    tty.close()
    screen = _read_pty(master)
    os.close(master)
    assert second["ran"] == [] and set(second["reused"]) == set(first["ran"])
    assert f"{CLEAR_LINE}[corpus] 3/3 corpus_dataset_job[refuge]" in screen
    kept = [ln.split(CLEAR_LINE)[-1] for ln in screen.replace("\r\n", "\n").split("\n") if ln.split(CLEAR_LINE)[-1]]
    assert [ln.split(" ")[0] for ln in kept] == ["[corpus]", "[corpus]", "[publish]", "[publish]", "[training]",
                                                  "[training]", "[evaluation]", "[evaluation]"], kept

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


@pytest.mark.slow
def test_main_job_runs_are_listed_on_the_job_pages(home):
    """The runs of the test above, seen through the webserver of workspace.yaml on the same instance: the job page's
    query (runs of the job in repository __repository__@medlvr) lists them."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    cmd = [str(Path(sys.executable).with_name("dagster-webserver")), "-w", str(REPO / "workspace.yaml"),
           "-h", "127.0.0.1", "-p", str(port)]
    with dagster_server(cmd, port, env, cwd=REPO) as base:
        for job in ("corpus_dataset_job", "corpus_publish_job", "training_job", "evaluation_report_job"):
            res = graphql(base, JOB_RUNS, {"job": job})
            page = res["data"]["pipelineOrError"]
            assert page["__typename"] == "Pipeline", res
            assert page["runs"] and all(r["status"] == "SUCCESS" for r in page["runs"]), (job, page)
        runs = graphql(base, JOB_RUNS, {"job": "corpus_dataset_job"})["data"]["pipelineOrError"]["runs"]
        partitions = {t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"}
        assert partitions == {"busi", "refuge"}


def test_no_loading_bars_even_when_transformers_was_imported_first(tmp_path, monkeypatch):
    """HF_HUB_DISABLE_PROGRESS_BARS is read when transformers is imported: a process that imported it before the
    main job (the test suite, a notebook) must still get no "Loading weights" bar from the in-process steps."""
    from transformers.utils import logging as hf_logging

    from medlvr.pipelines.main_job import MainJob

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))  # restored after the test
    hf_logging.enable_progress_bar()
    try:
        MainJob(tmp_path / "home", log=lambda line: None)
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()

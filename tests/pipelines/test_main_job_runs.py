"""The main job's runs, quickly (the whole job is tests/pipelines/test_main_job.py): a run it launches through
Dagster's public API is tagged as the main job's and carries the code location's repository label; a stage that
failed in the orchestration is retried once, with one line saying so, and a step's own failure (a trainer error)
never is."""

import dagster as dg
import pytest

from medlvr.pipelines.main_job import LAUNCHED_BY_TAG, MainJob
from medlvr.pipelines.training.logs import FAILURE_KIND, ORCHESTRATION

LOST_REPORT = "TEST trainer exited 0 but no materialisation arrived over Dagster Pipes (its message stream broke)"
TRAINER_ERROR = "TEST trainer failed: RuntimeError: loss is NaN at step 3"


@pytest.fixture
def main_job(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))  # MainJob sets it; restored after the test
    monkeypatch.delenv("MEDLVR_HOME", raising=False)
    lines = []
    return MainJob(tmp_path / "home", log=lines.append, force=True), lines


def test_a_launched_run_is_tagged_as_the_main_jobs(main_job):
    job, _ = main_job
    assert job.run("knowledge_graph_job")
    (run,) = job.instance.get_runs()
    assert run.job_name == "knowledge_graph_job" and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags[LAUNCHED_BY_TAG] == "demo" and run.tags[".dagster/repository"] == "__repository__@medlvr"
    assert job.instance.get_latest_materialization_event(dg.AssetKey("knowledge_graph")).run_id == run.run_id
    # and the public staleness reads it back: the knowledge graph is up to date now
    job.force = False
    assert job.up_to_date("knowledge_graph_job")


def _stage_failing(outcomes: list[str]):
    """An `execute` stand-in: each call runs a one-asset job on the main job's instance that fails as the next
    outcome says ("orchestration": the training assets' lost-report Failure, "trainer": a trainer's error) or
    succeeds ("ok")."""
    calls = []

    def execute(self, job_name, partition, run_config):
        outcome = outcomes[len(calls)]
        calls.append(outcome)

        @dg.asset(name="stage")
        def stage():
            if outcome == "orchestration":
                raise dg.Failure(description=LOST_REPORT, metadata={FAILURE_KIND: ORCHESTRATION})
            if outcome == "trainer":
                raise dg.Failure(description=TRAINER_ERROR)

        result = dg.materialize([stage], instance=self.instance, raise_on_error=False)
        return result.run_id, result.success

    return execute, calls


def test_an_orchestration_failure_is_retried_once_and_says_so(main_job, monkeypatch):
    job, lines = main_job
    execute, calls = _stage_failing(["orchestration", "ok"])
    monkeypatch.setattr(MainJob, "execute", execute)
    assert job.run("training_job")
    assert calls == ["orchestration", "ok"] and job.summary["ran"] == ["training_job"]
    retries = [ln for ln in lines if "retry" in ln]
    assert len(retries) == 1 and retries[0].startswith("  retry  training_job: run ")
    assert retries[0].endswith(f"failed in the orchestration, not in its code ({LOST_REPORT}); running it once more")


def test_an_orchestration_failure_is_retried_only_once(main_job, monkeypatch):
    job, lines = main_job
    execute, calls = _stage_failing(["orchestration", "orchestration", "ok"])
    monkeypatch.setattr(MainJob, "execute", execute)
    assert not job.run("training_job")
    assert calls == ["orchestration", "orchestration"] and job.summary["failed"] == ["training_job"]
    assert sum("retry" in ln for ln in lines) == 1 and f"    {LOST_REPORT}" in lines


def test_a_trainer_error_is_not_retried(main_job, monkeypatch):
    job, lines = main_job
    execute, calls = _stage_failing(["trainer", "ok"])
    monkeypatch.setattr(MainJob, "execute", execute)
    assert not job.run("training_job")
    assert calls == ["trainer"] and job.summary["failed"] == ["training_job"]
    assert not any("retry" in ln for ln in lines) and f"    {TRAINER_ERROR}" in lines

"""The main job (`medlvr demo`, the README's first command): the whole asset graph materialised through Dagster on
the project's persistent instance (`pipelines/dagster_home`), so `dagster dev` afterwards shows every run,
materialisation, check result and the report.

    knowledge graph (1 run) knowledge_graph (what every dataset's QA pairs read)
    per dataset (one run)  raw_dataset -> normalized_images + roi_annotations -> qa_pairs   (+ blocking checks)
    publish (1 run)        dedup_groups -> decontamination, splits -> corpus_shards -> corpus_card
    training (1 run)       roi_sft_checkpoint (tiny) -> vlpo_checkpoint (tiny)               (Dagster Pipes)
                           on the sample corpus mixed with the synthetic grounding task's train split
    evaluation             evaluation_predictions per benchmark (6 runs) -> evaluation_report

Up-to-date runs are skipped by Dagster's staleness rules: a job runs when one of its assets (its partition) is
missing or stale, that is its code version changed (`medlvr.pipelines.code_version`) or an upstream asset has a
new data version; `raw_dataset`'s data version is its raw folder's fingerprint, so a touched raw file reruns that
dataset and what depends on it. `--force` runs every job.

Every run goes through Dagster's public API (`dg.execute_job` of a `dg.build_reconstructable_job`, staleness read
from the recorded versions by pipelines/staleness.py), so the project runs on a range of Dagster versions. Each run
is tagged `medlvr/launched_by: demo` and carries the repository label of workspace.yaml's code location (location
`medlvr`), so the webserver lists it on the job's page and the timeline. The run's steps execute in this process,
one after the other (the in-process executor: about 40 runs of a few seconds each fit the 3-minute budget only
without a process per step); the training steps launch their trainer as a Dagster Pipes subprocess.

A failed stage is run once more only when the failure is the orchestration's (the failed step says so: a trainer
that exited 0 but whose Pipes report never arrived), with one line saying so; a step's own failure (a trainer's
error, bad data) and an interrupted run are reported, never retried.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.evalsets.registry import sample_writers, write_benchmark_samples
from medlvr.corpus.package_data import shipped_config
from medlvr.corpus.sample_data import write_samples
from medlvr.corpus.sample_data.synthetic_grounding import DATASET as GROUNDING
from medlvr.corpus.sample_data.synthetic_grounding import write_grounding_task
from medlvr.evaluation.config import BENCHMARKS, DATA_DIRS
from medlvr.pipelines.code_version import folder_fingerprint
from medlvr.pipelines.console import Console, StageProgress
from medlvr.pipelines.corpus.resources import medlvr_home
from medlvr.pipelines.definitions import defs
from medlvr.pipelines.staleness import Staleness
from medlvr.pipelines.training.checks import checkpoint_model_dir, latest_metadata
from medlvr.pipelines.training.logs import FAILURE_KIND, ORCHESTRATION

LOCATION_NAME = "medlvr"  # workspace.yaml's location_name
PARTITION_TAG = "dagster/partition"  # the run tag that selects a partitioned job's partition
# Every run the main job launches says so in the UI (filter runs by this tag); the repository label is the tag by
# which the webserver lists a run on its job's page (`__repository__` is the repository name Dagster gives one
# `Definitions` object; `@` then the code location's name)
LAUNCHED_BY_TAG = "medlvr/launched_by"
RUN_TAGS = {LAUNCHED_BY_TAG: "demo", ".dagster/repository": f"__repository__@{LOCATION_NAME}"}
# The main job's ROI-SFT budget: 200 steps x 16 rows ~ 1.5 passes over the mix of the sample corpus (587 train
# rows) and the grounding task's train split. Measured on 100 held-out items: 150 steps gave 80 %, 200 and 250 steps
# 100 % (42 s of CPU for 200 steps); the report's synthetic_grounding row shows it.
GROUNDING_TRAIN_ITEMS = 1600
GROUNDING_TEST_ITEMS = 48  # held-out questions in the report (6 batches of 8): ~2 points of accuracy each
SFT_STEPS, SFT_MICRO_BATCH = 200, 16


def resolve_job(job_name: str):
    """The job `job_name` of the code location's definitions: what `dg.build_reconstructable_job` calls to rebuild a
    run's job (in this process, or in another one that re-executes the run)."""
    return defs.resolve_job_def(job_name)


def write_default_instance_settings(dagster_home: Path) -> bool:
    """Give a home without a dagster.yaml the project's instance settings (the gpu pool's limit, the run queue, run
    retries and monitoring, telemetry off), as the checkout's pipelines/dagster_home has them: without it a demo run
    from any other folder (a wheel install, `--dagster-home DIR`) would get Dagster's defaults, telemetry on among
    them. A home that has one keeps it. Written atomically; True if written."""
    target = dagster_home / "dagster.yaml"
    if target.exists():
        return False
    text = importlib.resources.files("medlvr.pipelines").joinpath("dagster_home", "dagster.yaml").read_text()
    tmp = target.with_name(f".dagster.yaml.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return True


class MainJob:
    def __init__(self, dagster_home: Path, log: Callable[[str], None] = print, force: bool = False,
                 stream: TextIO | None = None):
        Path(dagster_home).mkdir(parents=True, exist_ok=True)  # a fresh home: Dagster needs the folder to exist
        write_default_instance_settings(Path(dagster_home))
        os.environ["DAGSTER_HOME"] = str(Path(dagster_home).resolve())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # the evaluation steps load models in this process: no "Loading weights" bar per load on the console
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # imported before us (a test, an embedding program): the variable is read
            sys.modules["transformers"].utils.logging.disable_progress_bar()  # at import, so switch it off directly
        import warnings

        import dagster as dg

        warnings.filterwarnings("ignore", category=dg.PreviewWarning)  # Pipes internals; noise on the console
        self.dg, self.defs, self.force = dg, defs, force
        self.console = Console(log, stream)
        self.progress: StageProgress | None = None  # the stage being run
        self.instance = dg.DagsterInstance.get()
        self.home = medlvr_home()
        self.summary: dict[str, list[str]] = {"ran": [], "reused": [], "failed": []}
        self._staleness: Staleness | None = None

    def staleness(self) -> Staleness:
        """What the instance recorded, read once per run of this job (`execute` drops it: the instance changed)."""
        if self._staleness is None:
            self._staleness = Staleness(self.defs, self.instance)
        return self._staleness

    def up_to_date(self, job_name: str, partition: str | None = None) -> bool:
        """Every asset of the job (its partition) is up to date (pipelines/staleness.py)."""
        keys = self.defs.resolve_job_def(job_name).asset_layer.selected_asset_keys
        return all(self.staleness().up_to_date(k, partition) for k in keys)

    def raw_unchanged(self, dataset: str, root: Path) -> bool:
        """raw_dataset[dataset]'s recorded data version is the raw folder's fingerprint now."""
        return self.staleness().data_version(self.dg.AssetKey("raw_dataset"), dataset) == folder_fingerprint(root)

    def stage(self, name: str, total: int, heading: str) -> StageProgress:
        self.console.line(f"[{name}] {heading}")
        self.progress = self.console.stage(name, total)
        return self.progress

    def run(self, job_name: str, partition: str | None = None, run_config: dict | None = None,
            inputs_unchanged: bool = True) -> bool:
        label = f"{job_name}[{partition}]" if partition else job_name
        if not self.force and inputs_unchanged and self.up_to_date(job_name, partition):
            self.summary["reused"].append(label)
            if self.progress:
                self.progress.step(label, "reused")
            return True
        t0 = time.perf_counter()
        run_id, ok = self.execute(job_name, partition, run_config)
        reason = None if ok else self.orchestration_failure(run_id)
        if reason is not None:  # once only: a second failure is reported like any other
            self.console.line(f"  retry  {label}: run {run_id[:8]} failed in the orchestration, not in its code "
                              f"({reason}); running it once more")
            run_id, ok = self.execute(job_name, partition, run_config)
        self.summary["ran" if ok else "failed"].append(label)
        if self.progress:
            self.progress.step(label, "ok" if ok else "FAILED", time.perf_counter() - t0, f"run {run_id[:8]}")
        if not ok:
            for failure in self.step_failures(run_id):
                self.console.line(failure_text(failure.error))
        return ok

    def step_failures(self, run_id: str) -> list:
        return [ev.dagster_event.step_failure_data
                for ev in self.instance.all_logs(run_id, of_type=self.dg.DagsterEventType.STEP_FAILURE)]

    def orchestration_failure(self, run_id: str) -> str | None:
        """Why the failed run `run_id` is the orchestration's failure (worth one more try), or None when a step
        failed on its own (a trainer's error, bad data, a bug: running it again would fail the same way). The
        orchestration's: every failed step says so in its Failure's metadata (a trainer that exited 0 but whose
        Pipes report never arrived, pipelines/training/logs.py). A run that failed with no failed step (interrupted,
        e.g. Ctrl-C) is not retried either."""
        failures = self.step_failures(run_id)
        kinds = [_metadata_text((f.user_failure_data.metadata if f.user_failure_data else {}).get(FAILURE_KIND))
                 for f in failures]
        if failures and all(kind == ORCHESTRATION for kind in kinds):
            return failures[0].error.message.strip().split(": ", 1)[-1].splitlines()[0]
        return None

    def execute(self, job_name: str, partition: str | None, run_config: dict | None) -> tuple[str, bool]:
        """One run of `job_name`, executed in this process, tagged as the main job's and with the code location's
        repository label (the webserver of workspace.yaml lists it on the job's page)."""
        self._staleness = None  # the instance changes: what was read before this run is out of date
        job = self.dg.build_reconstructable_job(__name__, resolve_job.__name__, (job_name,),
                                                reconstructor_working_directory=os.getcwd())
        # the full event log is in the instance (dagster dev); the console gets warnings and errors only
        cfg = {**(run_config or {}), "execution": {"config": {"in_process": {}}},
               "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        tags = {**RUN_TAGS, **({PARTITION_TAG: partition} if partition else {})}
        with self.dg.execute_job(job, self.instance, run_config=cfg, tags=tags) as result:
            return result.run_id, result.success

    # ------------------------------------------------------------------------------------------------- stages
    def corpus(self, datasets: list[str]) -> None:
        data_root = self.home / "sample_data"
        missing = [d for d in datasets if not (data_root / d).is_dir()]
        if missing:  # the bundled default: written once, then read like any user's data root
            write_samples(data_root, missing)
        progress = self.stage("corpus", len(datasets) + 1, f"the knowledge graph and {len(datasets)} datasets -> "
                                                            f"{self.home / 'corpus'}")
        if not self.run("knowledge_graph_job"):  # qa_pairs reads it: materialised first, then up to date
            raise RuntimeError("the knowledge graph failed")
        for ds in datasets:
            if not self.run("corpus_dataset_job", ds, inputs_unchanged=self.raw_unchanged(ds, data_root / ds)):
                raise RuntimeError(f"dataset {ds} failed; see `dagster dev` for the run's logs")
        progress.close()
        self._bench_root_written()
        progress = self.stage("publish", 1, "dedup, decontamination, splits, shards, card")
        if not self.run("corpus_publish_job", run_config=self._publish_config()):
            raise RuntimeError("publishing the corpus failed")
        progress.close()

    def _bench_root(self) -> Path:
        return self.home / "evaluation" / "benchmarks"

    def _bench_root_written(self) -> None:
        root = self._bench_root()
        grounding = root / DATA_DIRS.get(GROUNDING, GROUNDING)
        if not grounding.is_dir():  # the held-out split the report scores: more items than the bundled sample
            write_grounding_task(grounding, n_train=0, n_test=GROUNDING_TEST_ITEMS, seed=0)
        # the bundled samples of the others, only the missing folders (a home written before a benchmark was
        # registered gets just the new one)
        missing = [f for f in sample_writers() if f != grounding.name and not (root / f).is_dir()]
        if missing:
            write_benchmark_samples(root, missing)

    def _publish_config(self) -> dict:
        roots = [f"benchmark_roots.{b}={self._bench_root() / DATA_DIRS.get(b, b)}" for b in BENCHMARKS]
        return {"resources": {"corpus_settings": {"config": {"overrides": roots}}}}

    def _grounding_train_root(self) -> Path:
        """The synthetic grounding task's train split (corpus/sample_data/synthetic_grounding.py), written once: the
        part of the training mix the tiny model can learn in the budget (its held-out split is a benchmark)."""
        root = self.home / "training_data" / GROUNDING
        if not (root / "task.json").is_file():
            write_grounding_task(root, n_train=GROUNDING_TRAIN_ITEMS, n_test=0, seed=0)
        return root

    def training(self) -> None:
        grounding = self._grounding_train_root()
        progress = self.stage("training", 1, "ROI-SFT then VLPO of the tiny model (Dagster Pipes subprocesses; "
                                             f"their output: {self.home / 'runs'}/*/logs/)")
        run_config = {"ops": {
            "roi_sft_checkpoint": {"config": {"overrides": [
                # the sample corpus (587 rows of 31 datasets, too few to learn medicine from) mixed with the
                # grounding task, which a ~0.7 M-parameter model learns in this budget (docs/mechanism.md: cosine
                # ROI loss, lambda 1; MSE does not align the latents)
                f"data.mix=[{grounding}]", f"run.max_steps={SFT_STEPS}", f"run.micro_batch_size={SFT_MICRO_BATCH}",
                "latent.k_latent=4", "latent.roi_loss=cosine", "latent.roi_weight=1.0"]}},
            "vlpo_checkpoint": {"config": {"overrides": [
                f"data.source={GROUNDING}", f"data.root={grounding}",
                "rollout.k_latent=null",  # K from the ROI-SFT checkpoint (4)
                "rollout.max_new_tokens=10", "run.max_steps=4",
                "engine.lr=1.0e-4"]}},  # RL refines; at the SFT rate 4 steps can undo what SFT learned
        }}
        if not self.run("training_job", run_config=run_config):
            raise RuntimeError("training failed")
        progress.close()

    def checkpoints(self) -> dict[str, str]:
        out = {}
        for name, key in (("roi_sft", "roi_sft_checkpoint"), ("medlvr", "vlpo_checkpoint")):
            meta = latest_metadata(self.instance, self.dg.AssetKey(key))
            path = checkpoint_model_dir(meta)
            if path is None:
                raise RuntimeError(f"{key} has no checkpoint path in its metadata: {sorted(meta)}")
            out[name] = str(path)
        return out

    def evaluation(self) -> Path:
        models = self.checkpoints()
        out_dir = self.home / "evaluation" / "report"
        settings = {"config_path": str(shipped_config("eval_demo.yaml")), "model_paths": models,
                    "overrides": [f"out_dir={out_dir}", f"data_root={self._bench_root()}"]}
        cfg = {"resources": {"evaluation": {"config": settings}}}
        progress = self.stage("evaluation", len(BENCHMARKS) + 1, "predictions per benchmark, then the report")
        for bench in BENCHMARKS:
            if not self.run("evaluation_predictions_job", bench, cfg):
                raise RuntimeError(f"evaluation of {bench} failed")
        if not self.run("evaluation_report_job", run_config=cfg):
            raise RuntimeError("the evaluation report failed")
        progress.close()
        return out_dir / "report.html"


def _metadata_text(value) -> str | None:
    return getattr(value, "value", value)


def failure_text(error, max_lines: int = 25) -> str:
    """A failed step for the console: the error's message, indented, its last `max_lines` lines (a trainer's
    failure carries the last lines of its log and the log's path, pipelines/training/logs.py), no traceback."""
    message = error.message.strip()
    if error.cls_name == "Failure":  # a step's own dg.Failure: its description, without the class path
        message = message.split(": ", 1)[-1]
    elif error.cause is not None:  # a user error wrapped in DagsterExecutionStepExecutionError: the user error
        message = error.cause.message.strip()
    lines = [ln for ln in message.splitlines() if ln.strip()][-max_lines:]
    return "\n".join("    " + ln for ln in lines)


def run_main(dagster_home: Path, datasets: list[str] | None = None, force: bool = False,
             log: Callable[[str], None] = print, stream: TextIO | None = None) -> dict:
    """Run (or reuse) every stage; returns {"ran", "reused", "failed", "report", "seconds"}. Plain lines go
    through `log`; when `stream` (default stdout) is a terminal, each stage also shows a live status line there."""
    t0 = time.perf_counter()
    job = MainJob(dagster_home, log, force, stream)
    ids = datasets or list(load_catalog())
    job.corpus(ids)
    job.training()
    report = job.evaluation()
    return {**job.summary, "report": str(report), "seconds": round(time.perf_counter() - t0, 1),
            "home": str(job.home)}

"""The main job (`medlvr demo`, the README's first command): the whole asset graph materialised through Dagster on
the project's persistent instance (`pipelines/dagster_home`), so `dagster dev` afterwards shows every run,
materialisation, check result and the report.

    knowledge graph (1 run) knowledge_graph (what every dataset's QA pairs read)
    per dataset (31 runs)  raw_dataset -> normalized_images + roi_annotations -> qa_pairs   (+ blocking checks)
    publish (1 run)        dedup_groups -> decontamination, splits -> corpus_shards -> corpus_card
    training (1 run)       roi_sft_checkpoint (tiny) -> vlpo_checkpoint (tiny)               (Dagster Pipes)
                           on the sample corpus mixed with the synthetic grounding task's train split
    evaluation             evaluation_predictions per benchmark (6 runs) -> evaluation_report

Up-to-date runs are skipped by Dagster's own staleness: a job runs when one of its assets (its partition) is
missing or stale, that is its code version changed (`medlvr.pipelines.code_version`) or an upstream asset has a
new data version; `raw_dataset`'s data version is its raw folder's fingerprint, so a touched raw file reruns that
dataset and what depends on it. `--force` runs every job.

Every run belongs to the code location of workspace.yaml (location `medlvr`, module `medlvr.pipelines.definitions`):
it is created with that location's job origin, so the webserver lists it on the job's page and the timeline. The
run's steps execute in this process, one after the other (the in-process executor: about 40 runs of a few seconds
each fit the 3-minute budget only without a process per step); the training steps launch their trainer as a
Dagster Pipes subprocess.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.evalsets.registry import sample_writers, write_benchmark_samples
from medlvr.corpus.sample_data import write_samples
from medlvr.corpus.sample_data.synthetic_grounding import DATASET as GROUNDING
from medlvr.corpus.sample_data.synthetic_grounding import write_grounding_task
from medlvr.evaluation.config import BENCHMARKS, DATA_DIRS
from medlvr.pipelines.code_version import folder_fingerprint
from medlvr.pipelines.console import Console, StageProgress
from medlvr.pipelines.corpus.resources import medlvr_home
from medlvr.pipelines.definitions import defs
from medlvr.pipelines.training.checks import checkpoint_model_dir, latest_metadata

REPO = Path(__file__).resolve().parents[1]
LOCATION_NAME = "medlvr"  # workspace.yaml's location_name
DEFINITIONS_MODULE = "medlvr.pipelines.definitions"  # workspace.yaml's module_name
DEFINITIONS_ATTRIBUTE = "defs"
# The main job's ROI-SFT budget: 200 steps x 16 rows ~ 1.5 passes over the mix of the sample corpus (587 train
# rows) and the grounding task's train split. Measured on 100 held-out items: 150 steps gave 80 %, 200 and 250 steps
# 100 % (42 s of CPU for 200 steps); the report's synthetic_grounding row shows it.
GROUNDING_TRAIN_ITEMS = 1600
GROUNDING_TEST_ITEMS = 48  # held-out questions in the report (6 batches of 8): ~2 points of accuracy each
SFT_STEPS, SFT_MICRO_BATCH = 200, 16


def code_location_job_origin(job_name: str):
    """The origin a run of `job_name` gets when the webserver of workspace.yaml launches it: runs created with it
    carry the repository label `__repository__@medlvr` that the job's page filters on."""
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE,
                                  attribute=DEFINITIONS_ATTRIBUTE, working_directory=os.getcwd())
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, location_name=LOCATION_NAME)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


class MainJob:
    def __init__(self, dagster_home: Path, log: Callable[[str], None] = print, force: bool = False,
                 stream: TextIO | None = None):
        Path(dagster_home).mkdir(parents=True, exist_ok=True)  # a fresh home: Dagster needs the folder to exist
        os.environ["DAGSTER_HOME"] = str(Path(dagster_home).resolve())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # the evaluation steps load models in this process: no "Loading weights" bar per load on the console
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # imported before us (a test, an embedding program): the variable is read
            sys.modules["transformers"].utils.logging.disable_progress_bar()  # at import, so switch it off directly
        import warnings

        import dagster as dg
        from dagster._core.definitions.reconstruct import ReconstructableRepository

        warnings.filterwarnings("ignore", category=dg.PreviewWarning)  # Pipes internals; noise on the console
        self.dg, self.defs, self.force = dg, defs, force
        self.console = Console(log, stream)
        self.progress: StageProgress | None = None  # the stage being run
        self.instance = dg.DagsterInstance.get()
        self.asset_graph = defs.resolve_asset_graph()
        self.repository = ReconstructableRepository.for_module(DEFINITIONS_MODULE, DEFINITIONS_ATTRIBUTE,
                                                               working_directory=os.getcwd())
        self.home = medlvr_home()
        self.summary: dict[str, list[str]] = {"ran": [], "reused": [], "failed": []}
        self._resolver = None

    def _stale_status(self):
        """Dagster's stale-status resolver. It caches what it read from the instance, so it is made again after
        every run this job executes (`execute` drops it)."""
        from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
        from dagster._core.definitions.data_version import CachingStaleStatusResolver
        from dagster._time import get_current_datetime

        if self._resolver is not None:
            return self._resolver
        view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                              instance=self.instance, asset_graph=self.asset_graph)
        self._resolver = CachingStaleStatusResolver(instance=self.instance, asset_graph=self.asset_graph,
                                                    loading_context=view)
        return self._resolver

    def up_to_date(self, job_name: str, partition: str | None = None) -> bool:
        """Every asset of the job (its partition) is FRESH in Dagster's stale status."""
        from dagster._core.definitions.data_version import StaleStatus

        resolver = self._stale_status()
        keys = self.defs.resolve_job_def(job_name).asset_layer.selected_asset_keys
        return all(resolver.get_status(k, partition) == StaleStatus.FRESH for k in keys)

    def raw_unchanged(self, dataset: str, root: Path) -> bool:
        """raw_dataset[dataset]'s recorded data version is the raw folder's fingerprint now."""
        current = self._stale_status().get_current_data_version(self.dg.AssetKey("raw_dataset"), dataset)
        return current == self.dg.DataVersion(folder_fingerprint(root))

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
        self.summary["ran" if ok else "failed"].append(label)
        if self.progress:
            self.progress.step(label, "ok" if ok else "FAILED", time.perf_counter() - t0, f"run {run_id[:8]}")
        if not ok:
            for ev in self.instance.all_logs(run_id, of_type=self.dg.DagsterEventType.STEP_FAILURE):
                self.console.line(failure_text(ev.dagster_event.step_failure_data.error))
        return ok

    def execute(self, job_name: str, partition: str | None, run_config: dict | None) -> tuple[str, bool]:
        """One run of `job_name`, created with the code location's origin and executed in this process."""
        from dagster._core.definitions.reconstruct import ReconstructableJob
        from dagster._core.execution.api import execute_run

        self._resolver = None  # the instance changes: statuses read before this run are out of date
        job = ReconstructableJob(self.repository, job_name)
        # the full event log is in the instance (dagster dev); the console gets warnings and errors only
        cfg = {**(run_config or {}), "execution": {"config": {"in_process": {}}},
               "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        dagster_run = self.instance.create_run_for_job(
            job_def=self.defs.resolve_job_def(job_name), run_config=cfg,
            tags={"dagster/partition": partition} if partition else {},
            remote_job_origin=code_location_job_origin(job_name), job_code_origin=job.get_python_origin())
        result = execute_run(job, dagster_run, self.instance)
        return dagster_run.run_id, result.success

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
        settings = {"config_path": str(REPO / "configs" / "eval_demo.yaml"), "model_paths": models,
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

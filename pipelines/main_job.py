"""The main job (`medlvr demo`, the README's first command): the whole asset graph materialised through Dagster on
the project's persistent instance (`pipelines/dagster_home`), so `dagster dev` afterwards shows every run,
materialisation, check result and the report.

    per dataset (31 runs)  raw_dataset -> normalized_images + roi_annotations -> qa_pairs   (+ blocking checks)
    publish (1 run)        dedup_groups -> decontamination, splits -> corpus_shards -> corpus_card
    training (1 run)       roi_sft_checkpoint (tiny) -> vlpo_checkpoint (tiny)               (Dagster Pipes)
    evaluation             evaluation_predictions per benchmark (6 runs) -> evaluation_report

Up-to-date steps are reused: every run is tagged with a fingerprint of its inputs (raw files, configs, the source
of the packages the step calls, upstream fingerprints); a step whose latest successful run has the same
fingerprint is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
FINGERPRINT_TAG = "medlvr/input_fingerprint"


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def tree_fingerprint(root: Path, suffixes: tuple[str, ...] | None = None) -> str:
    """Paths, sizes and modification times under `root` (cheap: no file is read)."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and (suffixes is None or p.suffix in suffixes):
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def code_fingerprint(*packages: str) -> str:
    """The source of the packages a step calls: editing their code makes the step stale."""
    h = hashlib.sha256()
    for pkg in packages:
        for p in sorted((REPO / pkg).rglob("*")):
            if p.is_file() and p.suffix in (".py", ".yaml", ".csv", ".json") and "__pycache__" not in p.parts:
                h.update(p.relative_to(REPO).as_posix().encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:20]


class MainJob:
    def __init__(self, dagster_home: Path, log: Callable[[str], None] = print, force: bool = False):
        os.environ["DAGSTER_HOME"] = str(Path(dagster_home).resolve())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import dagster as dg

        from medlvr.pipelines.corpus.resources import medlvr_home
        from medlvr.pipelines.definitions import defs

        import warnings

        warnings.filterwarnings("ignore", category=dg.PreviewWarning)  # Pipes internals; noise on the console
        self.dg, self.defs, self.log, self.force = dg, defs, log, force
        self.instance = dg.DagsterInstance.get()
        self.home = medlvr_home()
        self.summary: dict[str, list[str]] = {"ran": [], "reused": [], "failed": []}

    def _up_to_date(self, job_name: str, fingerprint: str, partition: str | None) -> bool:
        if self.force:
            return False
        tags = {FINGERPRINT_TAG: fingerprint, **({"dagster/partition": partition} if partition else {})}
        runs = self.instance.get_runs(self.dg.RunsFilter(job_name=job_name, tags=tags,
                                                         statuses=[self.dg.DagsterRunStatus.SUCCESS]), limit=1)
        return bool(runs)

    def run(self, job_name: str, fingerprint: str, partition: str | None = None, run_config: dict | None = None) -> bool:
        label = f"{job_name}[{partition}]" if partition else job_name
        if self._up_to_date(job_name, fingerprint, partition):
            self.summary["reused"].append(label)
            return True
        t0 = time.perf_counter()
        job = self.defs.resolve_job_def(job_name)
        # the full event log is in the instance (dagster dev); the console gets warnings and errors only
        cfg = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = job.execute_in_process(instance=self.instance, partition_key=partition, run_config=cfg,
                                        tags={FINGERPRINT_TAG: fingerprint}, raise_on_error=False)
        ok = result.success
        self.summary["ran" if ok else "failed"].append(label)
        self.log(f"  {'ok ' if ok else 'FAILED'} {label} ({time.perf_counter() - t0:.1f}s, run {result.run_id[:8]})")
        if not ok:
            for ev in result.all_events:
                if ev.is_failure and ev.event_specific_data is not None and getattr(ev.event_specific_data, "error", None):
                    self.log("    " + ev.event_specific_data.error.message.strip().splitlines()[-1])
        return ok

    # ------------------------------------------------------------------------------------------------- stages
    def corpus(self, datasets: list[str]) -> str:
        from medlvr.corpus.sample_data import write_samples

        data_root = self.home / "sample_data"
        missing = [d for d in datasets if not (data_root / d).is_dir()]
        if missing:  # the bundled default: written once, then read like any user's data root
            write_samples(data_root, missing)
        code = code_fingerprint("corpus", "pipelines/corpus")
        fps = {}
        self.log(f"[corpus] {len(datasets)} datasets -> {self.home / 'corpus'}")
        for ds in datasets:
            fps[ds] = _hash(code, tree_fingerprint(data_root / ds))
            if not self.run("corpus_dataset_job", fps[ds], ds):
                raise RuntimeError(f"dataset {ds} failed; see `dagster dev` for the run's logs")
        publish_fp = _hash(code, fps, self._bench_fp())
        self.log("[publish] dedup, decontamination, splits, shards, card")
        if not self.run("corpus_publish_job", publish_fp, run_config=self._publish_config()):
            raise RuntimeError("publishing the corpus failed")
        return publish_fp

    def _bench_root(self) -> Path:
        return self.home / "evaluation" / "benchmarks"

    def _bench_fp(self) -> str:
        from medlvr.corpus.evalsets.registry import write_benchmark_samples

        root = self._bench_root()
        if not root.is_dir():
            write_benchmark_samples(root)
        return tree_fingerprint(root)

    def _publish_config(self) -> dict:
        from medlvr.evaluation.config import BENCHMARKS, DATA_DIRS

        roots = {b: str(self._bench_root() / DATA_DIRS.get(b, b)) for b in BENCHMARKS}
        return {"resources": {"corpus_settings": {"config": {"benchmark_roots": roots}}}}

    def training(self, upstream_fp: str) -> str:
        from medlvr.evaluation.config import DATA_DIRS

        fp = _hash(upstream_fp, code_fingerprint("training", "pipelines/training"),
                   (REPO / "configs" / "sft_tiny.yaml").read_text(), (REPO / "configs" / "vlpo_tiny.yaml").read_text())
        self.log("[training] ROI-SFT then VLPO of the tiny model (Dagster Pipes subprocesses)")
        run_config = {"ops": {
            "roi_sft_checkpoint": {"config": {"overrides": ["run.max_steps=30", "latent.k_latent=4"]}},
            "vlpo_checkpoint": {"config": {"overrides": [
                "data.source=omnimedvqa",
                f"data.root={self._bench_root() / DATA_DIRS.get('omnimedvqa', 'omnimedvqa')}",
                "rollout.k_latent=null",  # K from the ROI-SFT checkpoint (4)
                "rollout.max_new_tokens=10", "run.max_steps=4"]}},
        }}
        if not self.run("training_job", fp, run_config=run_config):
            raise RuntimeError("training failed")
        return fp

    def checkpoints(self) -> dict[str, str]:
        out = {}
        for name, key in (("roi_sft", "roi_sft_checkpoint"), ("medlvr", "vlpo_checkpoint")):
            ev = self.instance.get_latest_materialization_event(self.dg.AssetKey(key))
            meta = ev.asset_materialization.metadata if ev and ev.asset_materialization else {}
            ck = meta.get("checkpoint") or meta.get("final_model") or meta.get("model_path")
            if ck is None:
                raise RuntimeError(f"{key} has no checkpoint path in its metadata: {sorted(meta)}")
            path = Path(ck.value)
            out[name] = str(path / "model" if (path / "model").is_dir() else path)
        return out

    def evaluation(self, upstream_fp: str) -> Path:
        from medlvr.evaluation.config import BENCHMARKS

        models = self.checkpoints()
        out_dir = self.home / "evaluation" / "report"
        settings = {"config_path": str(REPO / "configs" / "eval_demo.yaml"), "model_paths": models,
                    "overrides": [f"out_dir={out_dir}", f"data_root={self._bench_root()}"]}
        cfg = {"resources": {"evaluation": {"config": settings}}}
        fp = _hash(upstream_fp, code_fingerprint("evaluation", "pipelines/evaluation"),
                   (REPO / "configs" / "eval_demo.yaml").read_text(), self._bench_fp(), models)
        self.log("[evaluation] predictions per benchmark, then the report")
        for bench in BENCHMARKS:
            if not self.run("evaluation_predictions_job", fp, bench, cfg):
                raise RuntimeError(f"evaluation of {bench} failed")
        if not self.run("evaluation_report_job", fp, run_config=cfg):
            raise RuntimeError("the evaluation report failed")
        return out_dir / "report.html"


def run_main(dagster_home: Path, datasets: list[str] | None = None, force: bool = False,
             log: Callable[[str], None] = print) -> dict:
    """Run (or reuse) every stage; returns {"ran", "reused", "failed", "report", "seconds"}."""
    from medlvr.corpus.catalog import load_catalog

    t0 = time.perf_counter()
    job = MainJob(dagster_home, log, force)
    ids = datasets or list(load_catalog())
    corpus_fp = job.corpus(ids)
    train_fp = job.training(corpus_fp)
    report = job.evaluation(train_fp)
    return {**job.summary, "report": str(report), "seconds": round(time.perf_counter() - t0, 1),
            "home": str(job.home)}

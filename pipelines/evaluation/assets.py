"""Evaluation assets. The evaluation is described by the same YAML as `medlvr evaluate --config FILE`
(`EvaluationSettings.config_path`; empty: the bundled sample evaluation with tiny models). Checkpoint paths can be
overridden per model name (`model_paths`), e.g. with the directories the checkpoint assets wrote.

* `evaluation_predictions` (partition = benchmark): every configured prediction job on that benchmark (main
  runs, the efficiency subset, the K sweep, the latent ablations); resumable, so a re-materialisation only fills
  in missing samples.
* `evaluation_report`: scores all prediction files and writes report.md / report.html (+ the Fig. 3 attention
  analysis, which loads the models again with eager attention).
"""


import dataclasses
from pathlib import Path

import dagster as dg
from pydantic import Field

from medlvr.evaluation.config import BENCHMARKS

BENCHMARK_PARTITIONS = dg.StaticPartitionsDefinition(list(BENCHMARKS))
CHECKPOINTS = [dg.AssetKey("roi_sft_checkpoint"), dg.AssetKey("vlpo_checkpoint")]
SAMPLE_CONFIG = {
    "title": "MedLVR evaluation (sample benchmarks)",
    "sample_data": True,
    "benchmarks": {b: {} for b in BENCHMARKS},
    "models": [
        {"name": "base", "path": "tiny:0", "k_latent": 0, "prompt_style": "direct"},
        {"name": "medlvr", "path": "tiny:2", "k_latent": 8, "prompt_style": "tags"},
    ],
    "decode": {"batch_size": 8, "max_new_tokens": 24, "max_pixels": 50176},
    "efficiency": {"seed": 0, "models": ["base", "medlvr"]},
    "table4": {"models": ["base", "medlvr"]},
    "fig5": {"model": "medlvr", "k_values": [2, 4, 8, 14, 16]},
    "fig3": {"models": ["base", "medlvr"], "benchmark": "slake", "n_samples": 2, "max_new_tokens": 16},
    "ablation": {"model": "medlvr"},
}


class EvaluationSettings(dg.ConfigurableResource):
    """Which evaluation to run and where its outputs go."""

    config_path: str = Field(default="", description="evaluation YAML; empty: the bundled sample evaluation")
    out_dir: str = Field(default="", description="override out_dir; empty: the config's, or "
                                                 "<MedLVR home>/evaluation for the sample evaluation")
    model_paths: dict[str, str] = Field(default_factory=dict, description="model name -> checkpoint dir")
    data_root: str = Field(default="", description="override the config's data_root (benchmark folders)")
    limit: int = Field(default=0, description="at most N samples per benchmark (0: all)")

    def load(self):
        from medlvr.evaluation.config import EvalConfig
        from medlvr.pipelines.corpus.resources import medlvr_home

        out = self.out_dir or None
        if self.config_path:
            cfg = EvalConfig.from_yaml(self.config_path, out_dir=out, limit=self.limit or None,
                                       data_root=self.data_root or None)
        else:
            home = medlvr_home() / "evaluation"
            cfg = EvalConfig.from_dict({**SAMPLE_CONFIG, "out_dir": out or str(home / "out"),
                                        "data_root": str(home / "benchmarks"), "limit": self.limit or None})
        if self.model_paths:
            models = tuple(dataclasses.replace(m, path=self.model_paths.get(m.name, m.path)) for m in cfg.models)
            cfg = dataclasses.replace(cfg, models=models)
        return cfg


@dg.asset(partitions_def=BENCHMARK_PARTITIONS, deps=CHECKPOINTS, group_name="evaluation", pool="gpu",
          kinds={"jsonl"}, description="model predictions on one benchmark (resumable JSONL per run)")
def evaluation_predictions(context: dg.AssetExecutionContext, evaluation: EvaluationSettings) -> dg.MaterializeResult:
    from medlvr.evaluation.runs import efficiency_manifest, load_all, plan_jobs, run_jobs
    from medlvr.evaluation.predictions import job_records, pred_path

    bench = context.partition_key
    cfg = evaluation.load()
    if bench not in cfg.benchmarks:
        context.log.info(f"{bench} is not configured in this evaluation: nothing to do")
        return dg.MaterializeResult(metadata={"configured": False})
    samples = load_all(cfg)
    jobs = [j for j in plan_jobs(cfg, efficiency_manifest(cfg, samples)) if j.benchmark == bench]
    timings = run_jobs(cfg, jobs, samples, progress=context.log.debug)
    n = sum(len(job_records(cfg, j)) for j in jobs)
    return dg.MaterializeResult(metadata={
        "configured": True, "samples": len(samples[bench]), "prediction_files": len(jobs), "records": n,
        "generate_s": float(sum(v["gen_s"] for v in timings.values() if isinstance(v, dict))),
        "out_dir": dg.MetadataValue.path(str(Path(pred_path(cfg.out_dir, jobs[0])).parents[3]) if jobs else ""),
    })


@dg.asset(deps=[evaluation_predictions, *CHECKPOINTS], group_name="evaluation", pool="gpu", kinds={"html"},
          description="Tables 1-4, Figs. 3 and 5 and the latent ablation as report.md + report.html")
def evaluation_report(context: dg.AssetExecutionContext, evaluation: EvaluationSettings) -> dg.MaterializeResult:
    from medlvr.evaluation.report import build_sections, write_report
    from medlvr.evaluation.runs import efficiency_manifest, load_all, merge_all, plan_jobs

    cfg = evaluation.load()
    samples = load_all(cfg)
    manifest = efficiency_manifest(cfg, samples)
    jobs = plan_jobs(cfg, manifest)
    merge_all(cfg, jobs, 1)
    md, page = write_report(cfg.out_dir, cfg.title, build_sections(cfg, samples, jobs, manifest))
    return dg.MaterializeResult(metadata={"report_md": dg.MetadataValue.path(str(md)),
                                          "report_html": dg.MetadataValue.path(str(page)),
                                          "preview": dg.MetadataValue.md(md.read_text()[:4000])})


ASSETS = [evaluation_predictions, evaluation_report]
RESOURCES = {"evaluation": EvaluationSettings()}

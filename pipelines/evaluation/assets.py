"""Evaluation assets. The evaluation is described by the library's own config, as for `medlvr evaluate --config FILE
--set key=value`: `EvaluationSettings.config_path` (empty: configs/eval_sample.yaml, the bundled sample
evaluation with tiny models, written under the MedLVR home) plus dotted `overrides`. Checkpoint paths can be set per
model name (`model_paths`), e.g. to the directories the checkpoint assets wrote; K then comes from the checkpoint
unless the config sets it.

* `evaluation_predictions` (partition = benchmark): every configured prediction job on that benchmark (main
  runs, the efficiency subset, the K sweep, the latent ablations); resumable, so a re-materialisation only fills
  in missing samples.
* `evaluation_report`: scores all prediction files and writes report.md / report.html (+ the Fig. 3 attention
  analysis, which loads the models again with eager attention).
"""


import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from medlvr.corpus.package_data import shipped_config
from medlvr.evaluation.config import BENCHMARKS, load_eval_config
from medlvr.pipelines.corpus.metadata import MARKDOWN_MAX_CHARS, markdown_excerpt, md_table
from medlvr.pipelines.corpus.resources import medlvr_home
from medlvr.training.checkpoints import TINY

BENCHMARK_PARTITIONS = dg.StaticPartitionsDefinition(list(BENCHMARKS))
CHECKPOINTS = [dg.AssetKey("roi_sft_checkpoint"), dg.AssetKey("vlpo_checkpoint")]
SAMPLE_CONFIG = shipped_config("eval_sample.yaml")


class EvaluationSettings(dg.ConfigurableResource):
    """Which evaluation to run: the library's config file plus dotted overrides, and the checkpoints to use."""

    config_path: str = Field(default="", description="evaluation YAML; empty: configs/eval_sample.yaml with its "
                                                     "outputs under <MedLVR home>/evaluation")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides, e.g. out_dir=/x, limit=4, "
                                                                   "data_root=/benchmarks, decode.batch_size=4")
    model_paths: dict[str, str] = Field(default_factory=dict, description="model name -> checkpoint dir")
    max_parse_fail_rate: float = Field(default=0.25, description="the evaluation_report check: highest share of "
                                       "unparseable answers a trained model (not `path: tiny`) may give, per model")

    def load(self):
        path, defaults = self.config_path, []
        if not path:
            home = medlvr_home() / "evaluation"
            path, defaults = SAMPLE_CONFIG, [f"out_dir={home / 'out'}", f"data_root={home / 'benchmarks'}"]
        try:
            return load_eval_config(path, [*defaults, *self.overrides], self.model_paths)
        except ValueError as e:
            raise dg.Failure(description=f"evaluation config: {e}") from None


@dg.asset(partitions_def=BENCHMARK_PARTITIONS, deps=CHECKPOINTS, group_name="evaluation", pool="gpu",
          kinds={"jsonl"}, description="model predictions on one benchmark (resumable JSONL per run)")
def evaluation_predictions(context: dg.AssetExecutionContext, evaluation: EvaluationSettings) -> dg.MaterializeResult:
    # imports torch: only when the step runs, so loading the code location (UI, daemon, each step's process) stays
    # light for the corpus assets
    from medlvr.evaluation.predictions import job_records, pred_path
    from medlvr.evaluation.runs import efficiency_manifest, load_all, plan_jobs, run_jobs

    bench = context.partition_key
    cfg = evaluation.load()
    if bench not in cfg.benchmarks:
        context.log.info(f"{bench} is not configured in this evaluation: nothing to do")
        return dg.MaterializeResult(metadata={"configured": False})
    samples = load_all(cfg)
    jobs = [j for j in plan_jobs(cfg, efficiency_manifest(cfg, samples)) if j.benchmark == bench]
    timings = run_jobs(cfg, jobs, samples, progress=context.log.debug)
    failed = {k: v for k, v in timings.items() if isinstance(v, dict) and v.get("failed")}
    if failed:  # endpoint requests that failed for good: fail the partition; a rerun asks only those again
        job, st = next(iter(failed.items()))
        raise dg.Failure(description=f"{sum(v['failed'] for v in failed.values())} endpoint requests failed "
                                     f"(first job {job}: {st['last_error']}); materialise again to ask only those")
    n = sum(len(job_records(cfg, j)) for j in jobs)
    return dg.MaterializeResult(metadata={
        "configured": True, "samples": len(samples[bench]), "prediction_files": len(jobs), "records": n,
        "generate_s": float(sum(v["gen_s"] for v in timings.values() if isinstance(v, dict))),
        "out_dir": dg.MetadataValue.path(str(Path(pred_path(cfg.out_dir, jobs[0])).parents[3]) if jobs else ""),
    })


@dg.asset(deps=[evaluation_predictions, *CHECKPOINTS], group_name="evaluation", pool="gpu", kinds={"html"},
          description="Tables 1-4, Figs. 3 and 5 and the latent ablation as report.md + report.html")
def evaluation_report(context: dg.AssetExecutionContext, evaluation: EvaluationSettings) -> dg.MaterializeResult:
    # imports torch: only when the step runs
    from medlvr.evaluation.runs import (efficiency_manifest, load_all, merge_all, plan_jobs, run_latent_diagnostics,
                                        write_outputs)

    cfg = evaluation.load()
    samples = load_all(cfg)
    manifest = efficiency_manifest(cfg, samples)
    jobs = plan_jobs(cfg, manifest)
    merge_all(cfg, jobs, 1)
    if cfg.latent_diagnostics is not None:  # the report's "Latent diagnostics" section, as `medlvr evaluate` writes it
        seconds = run_latent_diagnostics(cfg, samples, context.log.debug)
        context.log.info(f"latent diagnostics: {seconds:.1f}s")
    md, page, results = write_outputs(cfg, samples, jobs, manifest)
    return dg.MaterializeResult(metadata={"report_md": dg.MetadataValue.path(str(md)),
                                          "report_html": dg.MetadataValue.path(str(page)),
                                          "results_json": dg.MetadataValue.path(str(results)),
                                          "tables": report_tables_metadata(results, page)})


def report_tables_metadata(results_json: Path, report_html: Path) -> dg.MetadataValue:
    """The report's result tables as Markdown the UI renders (every section after Setup, whole tables only, at most
    `MARKDOWN_MAX_CHARS`; no CSV links, which lead nowhere in the UI), read from results.json."""
    from medlvr.evaluation.results import tables_markdown

    text = tables_markdown(json.loads(Path(results_json).read_text()))
    return dg.MetadataValue.md(markdown_excerpt(text, MARKDOWN_MAX_CHARS, where=str(report_html)))


def parse_fail_rates(cfg) -> dict[str, tuple[int, int]]:
    """{model: (unparseable answers, answers)} over the main runs of every benchmark, from the prediction files."""
    from medlvr.evaluation import tables as T  # imports torch: only when the check runs
    from medlvr.evaluation.predictions import job_records
    from medlvr.evaluation.runs import load_all, plan_jobs

    samples = load_all(cfg)
    by_bench = {b: {s.sample_id: s for s in v} for b, v in samples.items()}
    out: dict[str, tuple[int, int]] = {}
    for j in plan_jobs(cfg):
        if j.variant != "main" or j.k_latent != cfg.model(j.model).k_latent:
            continue
        rows = T.score_records(job_records(cfg, j), by_bench[j.benchmark], cfg.protocol)
        fails, n = out.get(j.model, (0, 0))
        out[j.model] = (fails + sum(bool(r["parse_fail"]) for r in rows), n + len(rows))
    return out


@dg.asset_check(asset=evaluation_report, blocking=True, description="Every trained model's share of unparseable answers (main "
                "runs, all benchmarks) is at most `evaluation.max_parse_fail_rate`; random `tiny` models are "
                "listed, not judged.")
def parse_fail_rate_below_threshold(evaluation: EvaluationSettings) -> dg.AssetCheckResult:
    cfg = evaluation.load()
    rates = parse_fail_rates(cfg)
    judged = {m.name for m in cfg.models if m.path != TINY}
    rows = [{"model": m, "judged": m in judged, "parse_fail": f, "answers": n, "rate": round(f / max(1, n), 4)}
            for m, (f, n) in rates.items()]
    bad = [r for r in rows if r["judged"] and r["rate"] > evaluation.max_parse_fail_rate]
    return dg.AssetCheckResult(passed=not bad and any(r["judged"] for r in rows), metadata={
        "max_parse_fail_rate": evaluation.max_parse_fail_rate, "over_threshold": len(bad),
        "rates": md_table(rows)})


ASSETS = [evaluation_predictions, evaluation_report]
CHECKS = [parse_fail_rate_below_threshold]
RESOURCES = {"evaluation": EvaluationSettings()}

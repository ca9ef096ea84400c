"""One evaluation from an `EvalConfig`: plan the prediction jobs, run this rank's share, merge, score, report.

Prediction files: `<out>/predictions/<model>/k<K>/<variant>/<benchmark>.jsonl` (rank files next to them while a
data-parallel run is in flight). Variants: "main" (Tables 1/2/4, Fig. 5), "efficiency" (Table 3, the subset in
`<out>/manifests/efficiency_subset.json`), "ablate_<kind>" (latent ablations). Figures go to `<out>/figures/`,
the report to `<out>/report.md` and `<out>/report.html`, its tables as CSV under `<out>/tables/`, all numbers in
`<out>/results.json` and one record per scored sample under `<out>/samples/` (`medlvr.evaluation.results`).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medlvr.corpus.chat_endpoint import ChatEndpoint
from medlvr.corpus.config import config_to_dict
from medlvr.corpus.evalsets.base import Sample
from medlvr.corpus.evalsets.registry import get_benchmark, write_benchmark_samples
from medlvr.evaluation.ablations import make_transform_factory
from medlvr.evaluation.config import ABLATIONS, EvalConfig
from medlvr.evaluation.latent_diagnostics import merge_rank_diagnostics, run_for_config
from medlvr.evaluation.endpoint_inference import run_endpoint_predictions
from medlvr.evaluation.inference import dist_info, load_for_eval, merge_predictions, run_predictions
from medlvr.evaluation.predictions import Job, pred_path
from medlvr.evaluation.protocols import get_protocol
from medlvr.evaluation.progress import StageBar
from medlvr.evaluation.report import build_sections, score_jobs, write_report
from medlvr.evaluation.results import links_section, table_files, write_results, write_sample_records
from medlvr.evaluation.tables import efficiency_subset, write_manifest


def load_benchmark(cfg: EvalConfig, name: str) -> list[Sample]:
    """The configured benchmark's samples sorted by id (at most `cfg.limit`), through the loader registry."""
    loader = get_benchmark(name).loader
    kw = dict(cfg.benchmarks[name])
    root = Path(kw.pop("path"))
    keep = get_protocol(cfg.protocol).keep
    samples = sorted((s for s in loader(root, **kw) if keep is None or keep(s)), key=lambda s: s.sample_id)
    return samples[: cfg.limit] if cfg.limit else samples


def benchmark_root(cfg: EvalConfig, name: str) -> Path | None:
    """The configured folder of a benchmark (error lines name files relative to it)."""
    spec = cfg.benchmarks.get(name)
    return Path(spec["path"]) if spec and spec.get("path") else None


def load_all(cfg: EvalConfig) -> dict[str, list[Sample]]:
    if cfg.sample_data and cfg.data_root is not None:
        missing = [b for b in cfg.benchmarks if not Path(cfg.benchmarks[b]["path"]).is_dir()]
        if missing:
            write_benchmark_samples(cfg.data_root, missing)
    return {b: load_benchmark(cfg, b) for b in cfg.benchmarks}


def efficiency_manifest(cfg: EvalConfig, samples: dict[str, list[Sample]],
                        write: bool = True) -> dict[str, list[str]] | None:
    if not cfg.efficiency:
        return None
    seed = int(cfg.efficiency.get("seed", 0))
    manifest = efficiency_subset(samples, seed, cfg.efficiency.get("quotas"))
    if write:
        write_manifest(cfg.out_dir / "manifests" / "efficiency_subset.json", manifest, seed)
    return manifest


def plan_jobs(cfg: EvalConfig, manifest: dict[str, list[str]] | None = None) -> list[Job]:
    jobs: list[Job] = []
    add = lambda j: jobs.append(j) if j not in jobs else None  # noqa: E731
    for m in cfg.models:
        for b in cfg.main_benchmarks:
            add(Job(m.name, b, m.k_latent, "main"))
    if cfg.efficiency and manifest:
        for name in cfg.efficiency.get("models", [m.name for m in cfg.models]):
            for b, ids in manifest.items():
                add(Job(name, b, cfg.model(name).k_latent, "efficiency", tuple(ids)))
    if cfg.fig5:
        bench = cfg.fig5.get("benchmark", "omnimedvqa")
        for k in cfg.fig5.get("k_values", [2, 4, 8, 14, 16]):
            add(Job(cfg.fig5["model"], bench, int(k), "main"))
    if cfg.ablation:
        spec = cfg.model(cfg.ablation["model"])
        for kind in cfg.ablation.get("kinds", ABLATIONS):
            for b in cfg.ablation.get("benchmarks", cfg.main_benchmarks):
                add(Job(spec.name, b, spec.k_latent, f"ablate_{kind}", None, kind))
    return jobs


def _job_samples(samples: dict[str, list[Sample]], job: Job) -> list[Sample]:
    subset = samples[job.benchmark]
    if job.ids is not None:
        keep = set(job.ids)
        subset = [s for s in subset if s.sample_id in keep]
    return subset


def run_jobs(cfg: EvalConfig, jobs: list[Job], samples: dict[str, list[Sample]], rank: int = 0,
             world_size: int = 1, progress: Callable[[str], None] | None = None, bars: bool = False) -> dict:
    """This rank's share of every job, one model load (or one endpoint client) per model. Returns timing info per
    job; an endpoint job also counts its requests that failed for good ("failed", with "last_error").

    progress(message): a line per batch (logs); bars: one progress display per model on stderr (the CLI)."""
    if cfg.decode.threads:
        torch.set_num_threads(cfg.decode.threads)
    info = {}
    for model_name in dict.fromkeys(j.model for j in jobs):
        spec = cfg.model(model_name)
        mine = [j for j in jobs if j.model == model_name]
        total = sum(len(shard_ids) for shard_ids in
                    ([s.sample_id for s in _job_samples(samples, j)][rank::world_size] for j in mine))
        bar = StageBar(f"{model_name}: inference", total) if bars else None
        if spec.endpoint is not None:
            client = ChatEndpoint(spec.endpoint)
            for j in mine:
                if bar:
                    bar.note(f"{j.variant} {j.benchmark}")
                st = run_endpoint_predictions(client, spec, _job_samples(samples, j), pred_path(cfg.out_dir, j),
                                              variant=j.variant, settings=cfg.decode, rank=rank,
                                              world_size=world_size, advance=bar.update if bar else None,
                                              benchmark_root=benchmark_root(cfg, j.benchmark))
                key = f"{j.model}/k{j.k_latent}/{j.variant}/{j.benchmark}"
                info[key] = {"done": st.n_done, "skipped": st.n_skipped, "gen_s": st.gen_s, "failed": st.failed,
                             "last_error": st.last_error}
                if progress:
                    progress(f"{model_name} {j.variant} {j.benchmark}: {st.n_done} answered, {st.failed} failed")
                if bar:
                    bar.job_done(f"{j.variant} {j.benchmark}: {st.n_done} answered, {st.n_skipped} already done, "
                                 f"{st.failed} failed")
            client.close()
            if bar:
                bar.close(f"{client.stats['retries']} retries, {client.stats['failures']} failed")
            continue
        lm = load_for_eval(spec, cfg.decode)
        info[f"load:{model_name}"] = lm.load_s
        for j in mine:
            factory = None
            if j.ablation:
                factory = make_transform_factory(j.ablation, float(cfg.ablation.get("noise_scale", 1.0)),
                                                 int(cfg.ablation.get("seed", 0)))
            if bar:
                bar.note(f"k={j.k_latent} {j.variant} {j.benchmark}")
            st = run_predictions(lm, _job_samples(samples, j), pred_path(cfg.out_dir, j), k_latent=j.k_latent,
                                 variant=j.variant, settings=cfg.decode, rank=rank, world_size=world_size,
                                 transform_factory=factory, ablation=j.ablation or None,
                                 progress=progress, advance=bar.update if bar else None,
                                 benchmark_root=benchmark_root(cfg, j.benchmark))
            info[f"{j.model}/k{j.k_latent}/{j.variant}/{j.benchmark}"] = {"done": st.n_done, "skipped": st.n_skipped,
                                                                          "gen_s": st.gen_s}
            if bar:
                bar.job_done(f"k={j.k_latent} {j.variant} {j.benchmark}: {st.n_done} answered, {st.n_skipped} already "
                             f"done ({st.gen_s:.1f}s)")
        if bar:
            bar.close()
        del lm
    return info


def merge_all(cfg: EvalConfig, jobs: list[Job], world_size: int) -> None:
    for j in jobs:
        merge_predictions(pred_path(cfg.out_dir, j), world_size, remove_parts=True)


def _barrier(world_size: int) -> None:
    """All ranks finished inference (torchrun: a gloo process group, created if needed)."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def write_outputs(cfg: EvalConfig, samples: dict[str, list[Sample]], jobs: list[Job],
                  manifest: dict[str, list[str]] | None) -> tuple[Path, Path, Path]:
    """Score the merged predictions; write the report (md + html), a CSV per table, results.json and the
    per-sample records. Returns (report.md, report.html, results.json)."""
    scored = score_jobs(cfg, samples, jobs)
    sections = build_sections(cfg, samples, jobs, manifest, scored)
    n_tables = len(table_files(sections))  # names each table's CSV, so the report links it
    sections.append(links_section(n_tables))
    results = write_results(cfg, sections, write_sample_records(cfg, samples, scored))
    md, page = write_report(cfg.out_dir, cfg.title, sections)
    return md, page, results


def run_latent_diagnostics(cfg: EvalConfig, samples: dict[str, list[Sample]],
                           progress: Callable[[str], None] | None = None) -> float:
    """The config's causal latent diagnostics (`latent_diagnostics:` section; the report's "Latent diagnostics"
    section reads what this writes), for `medlvr evaluate` and the Dagster `evaluation_report` alike. Seconds."""
    t0 = time.perf_counter()
    run_for_config(cfg, samples, progress)
    return time.perf_counter() - t0


def evaluate(cfg: EvalConfig, rank: int | None = None, world_size: int | None = None,
             progress: Callable[[str], None] | None = print, bars: bool = False) -> dict:
    """The whole evaluation. Under torchrun every rank generates its shard (and its batches of the latent
    diagnostics); rank 0 merges and writes the report.

    Returns {"jobs", "timings", "failed", "report_md", "report_html", "results_json"} (paths only on rank 0); "failed":
    job -> {"failed": n, "last_error"} for endpoint requests that failed for good (a rerun asks only those again).
    """
    r0, w0 = dist_info()
    rank, world_size = (r0 if rank is None else rank), (w0 if world_size is None else world_size)
    t0 = time.perf_counter()
    if world_size > 1 and rank != 0:
        _barrier(world_size)  # rank 0 first writes the sample benchmarks (sample_data: true) and the manifest
    samples = load_all(cfg)
    manifest = efficiency_manifest(cfg, samples, write=rank == 0)
    if world_size > 1 and rank == 0:
        _barrier(world_size)
    jobs = plan_jobs(cfg, manifest)
    timings = run_jobs(cfg, jobs, samples, rank, world_size, progress, bars)
    if cfg.latent_diagnostics is not None and world_size > 1:  # every rank its batches; rank 0 merges below
        t_diag = time.perf_counter()
        run_for_config(cfg, samples, progress, rank=rank, world_size=world_size)
        timings["latent_diagnostics_s"] = time.perf_counter() - t_diag
    _barrier(world_size)
    failed = {k: v for k, v in timings.items() if isinstance(v, dict) and v.get("failed")}
    result = {"jobs": jobs, "timings": timings, "failed": failed}
    if rank != 0:
        return result
    merge_all(cfg, jobs, world_size)
    if cfg.latent_diagnostics is not None and world_size > 1:
        merge_rank_diagnostics(cfg, samples, world_size)
    elif cfg.latent_diagnostics is not None:
        timings["latent_diagnostics_s"] = run_latent_diagnostics(cfg, samples, progress)
    md, page, results = write_outputs(cfg, samples, jobs, manifest)
    meta = {"config": config_to_dict(cfg), "world_size": world_size,
            "host": platform.node(), "torch": torch.__version__, "wall_s": time.perf_counter() - t0,
            "timings": timings}
    (cfg.out_dir / "run_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    result.update(report_md=md, report_html=page, results_json=results)
    return result



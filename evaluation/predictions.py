"""One evaluation job (a model x benchmark x K x variant, optionally an ablation) and where its prediction records
live. `runs` (planning and running jobs) and `report` (reading them back) both use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medlvr.evaluation.config import EvalConfig
from medlvr.evaluation.inference import read_records


@dataclass(frozen=True)
class Job:
    model: str
    benchmark: str
    k_latent: int
    variant: str
    ids: tuple[str, ...] | None = None  # None: every sample of the benchmark
    ablation: str = ""


def pred_path(out_dir: Path, job: Job) -> Path:
    return Path(out_dir) / "predictions" / job.model / f"k{job.k_latent}" / job.variant / f"{job.benchmark}.jsonl"


def job_records(cfg: EvalConfig, job: Job) -> list[dict]:
    return read_records(pred_path(cfg.out_dir, job))

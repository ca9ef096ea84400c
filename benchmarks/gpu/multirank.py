"""Multi-rank checks for a lent multi-GPU machine (issue 28), the checks tests/training/test_multirank.py makes on
two CPU ranks: ROI-SFT under DeepSpeed ZeRO-2 on N ranks against 1 rank with the same global batch, and the N-rank
checkpoint of step 2 resumed on 1 rank. Launched with torchrun as docs/training.md §5.1 prints it.

    python benchmarks/gpu/multirank.py --ranks 8 --device cuda --out r.json    # bash benchmarks/gpu/run.sh does this
    python benchmarks/gpu/multirank.py --dry-run --out r.json                  # 2 CPU ranks, gloo (a test runs this)

Writes ONE JSON file: per check the figure and whether it passed; exits 1 when one fails. Figures: the largest
relative per-step loss difference and the largest absolute weight difference against the 1-rank run (fp32, tiny
model; NCCL reduces in another order than an accumulation, so the GPU bound is looser than the CPU one), whether
the ranks' rows of every global batch are disjoint and together the 1-rank batch, and metrics written once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
STEPS, RESUME_AT = 4, 2
LOSS_RTOL = {"cpu": 1e-6, "cuda": 1e-4}
WEIGHT_ATOL = {"cpu": 1e-6, "cuda": 1e-4}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sft(ranks: int, global_micro: int, corpus: Path, out: Path, device: str, *extra: str) -> Path:
    """One ROI-SFT run of STEPS steps, global batch 2 x global_micro rows, on `ranks` ranks."""
    sets = [f"data.corpus={corpus}", f"run.out_dir={out}", "engine.backend=deepspeed", f"engine.device={device}",
            f"run.max_steps={STEPS}", f"run.save_every={RESUME_AT}", "run.keep_last=0", "run.progress=false",
            "run.tensorboard=false", "run.log_samples=true", "run.micro_batch_size=2",
            f"engine.grad_accum={global_micro // ranks}", *extra]
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port",
           str(_port()), "-m", "medlvr.training.sft.recipe", "--config", "configs/sft_tiny.yaml",
           *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"multirank: {' '.join(cmd[:4])} ... failed:\n{p.stderr[-3000:]}")
    return out


def losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def weight_diff(a: Path, b: Path) -> float:
    wa, wb = (load_file(d / "checkpoints" / f"step-{STEPS:07d}" / "model" / "model.safetensors") for d in (a, b))
    return max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa)


def loss_diff(a: Path, b: Path) -> float:
    la, lb = losses(a), losses(b)
    if len(la) != len(lb):
        return float("inf")
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la, lb))


def rows_split(one: Path, many: Path, ranks: int) -> bool:
    """Rank r's micro-batch is micro-batch r of the 1-rank step; the ranks' rows never overlap."""
    def log(out, r):
        return {(d := json.loads(x))["step"]: d["qa_ids"] for x in (out / "samples" / f"rank-{r}.jsonl").open()}
    ref = log(one, 0)
    per_rank = [log(many, r) for r in range(ranks)]
    for step, micro in ref.items():
        got = [mb for r in range(ranks) for mb in per_rank[r].get(step, [])]
        flat = [i for mb in got for i in mb]
        if got != micro or len(set(flat)) != len(flat):
            return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dry-run", action="store_true", help="2 CPU ranks on gloo")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    ranks, device = (2, "cpu") if a.dry_run else (a.ranks, a.device)
    if ranks < 2:
        raise SystemExit("multirank: --ranks must be at least 2")
    from medlvr.corpus.sample_corpus import build_sample_corpus

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multirank-") as tmp:
        tmp = Path(tmp)
        corpus = build_sample_corpus(tmp / "corpus")
        one = sft(1, ranks, corpus, tmp / "one", device)
        many = sft(ranks, ranks, corpus, tmp / "many", device)
        resumed = tmp / "resumed"
        (resumed / "checkpoints").mkdir(parents=True)
        ck = many / "checkpoints" / f"step-{RESUME_AT:07d}"
        subprocess.run(["cp", "-r", str(ck), str(resumed / "checkpoints")], check=True)
        sft(1, ranks, corpus, resumed, device, "run.resume=auto")
        metric_steps = [json.loads(x)["step"] for x in (many / "metrics.jsonl").read_text().splitlines()]
        checks = {
            "sft_loss_rel_diff": (loss_diff(one, many), LOSS_RTOL[device]),
            "sft_weight_abs_diff": (weight_diff(one, many), WEIGHT_ATOL[device]),
            "resume_n_to_1_weight_abs_diff": (weight_diff(one, resumed), WEIGHT_ATOL[device]),
        }
        res = {"device": device if device == "cpu" else _gpu_name(), "ranks": ranks, "command": " ".join(sys.argv),
               "platform": platform.platform(),
               "checks": {k: {"value": v, "bound": b, "passed": v <= b} for k, (v, b) in checks.items()}}
        res["checks"]["rows_disjoint_and_equal_to_one_rank"] = {"passed": rows_split(one, many, ranks)}
        res["checks"]["metrics_once_by_rank0"] = {"passed": metric_steps == list(range(1, STEPS + 1))}
    res["total_s"] = time.perf_counter() - t0
    res["passed"] = all(c["passed"] for c in res["checks"].values())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if res["passed"] else 1


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    sys.exit(main())

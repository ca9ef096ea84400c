"""Evaluation throughput (issue 8, Speed): samples/s batched vs one by one, and latent (K) vs plain (K=0)
generation time on the same samples, through the real evaluation path (`medlvr.evaluation.inference.run_predictions`:
prompt building, image loading, processor, `latent_generate`, JSONL writing).

    HF_HUB_OFFLINE=1 python benchmarks/bench_eval.py [--n 32] [--batch 16] [--k 8] [--max-new 24] [--repeats 3]

Defaults: tiny random Qwen2.5-VL (CPU, float32, 1 torch thread), the bundled sample benchmarks (SLAKE, VQA-RAD,
PMC-VQA, MMMU-H&M, MedXpertQA-MM, cycled to --n samples), pixel budget 112x112. The random model rarely emits
EOS, so every row runs to --max-new positions: the latent run has K + 2 more positions per sample than the plain
run of the same length, which sets a floor on the ratio (printed next to it). Median of --repeats interleaved runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from medlvr.corpus.config import build_config  # noqa: E402
from medlvr.evaluation.config import DecodeSettings, EvalConfig, ModelSpec  # noqa: E402
from medlvr.evaluation.inference import load_for_eval, run_predictions  # noqa: E402
from medlvr.evaluation.runs import load_all  # noqa: E402

BENCHES = ("slake", "vqa_rad", "pmc_vqa", "mmmu_hm", "medxpertqa_mm")


def samples(n: int, data_root: Path) -> list:
    cfg = build_config(EvalConfig, {"models": [{"name": "x", "path": "tiny"}], "benchmarks": {b: {} for b in BENCHES},
                                    "data_root": str(data_root), "sample_data": True, "out_dir": str(data_root)})
    pool = [s for v in load_all(cfg).values() for s in v]
    return [dataclasses.replace(pool[i % len(pool)], sample_id=f"{i:04d}") for i in range(n)]


def timed(lm, ss, settings, k) -> float:
    with tempfile.TemporaryDirectory() as d:
        st = run_predictions(lm, ss, Path(d) / "p.jsonl", k_latent=k, settings=settings)
    return st.gen_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-pixels", type=int, default=112 * 112)
    ap.add_argument("--model", default="tiny", help="tiny or a local checkpoint dir")
    ap.add_argument("--tiny-seed", type=int, default=0, help="seed of the tiny model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = DecodeSettings(batch_size=a.batch, max_new_tokens=a.max_new, max_pixels=a.max_pixels, device=a.device,
                          dtype=a.dtype)
    lm = load_for_eval(ModelSpec("bench", a.model, tiny_seed=a.tiny_seed, k_latent=a.k), base)
    lm.model.generation_config.eos_token_id = None  # fixed lengths: every row runs to max_new_tokens
    with tempfile.TemporaryDirectory() as d:
        ss = samples(a.n, Path(d))
        one = dataclasses.replace(base, batch_size=1)
        timed(lm, ss[:4], base, a.k)  # warm-up
        res = {"batched_latent": [], "single_latent": [], "batched_plain": []}
        for _ in range(a.repeats):
            res["batched_latent"].append(timed(lm, ss, base, a.k))
            res["single_latent"].append(timed(lm, ss, one, a.k))
            res["batched_plain"].append(timed(lm, ss, base, 0))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"model {a.model}, {a.n} samples, batch {a.batch}, K={a.k}, {a.max_new} generated positions, "
          f"{a.threads} thread(s), device {a.device}, {a.dtype}")
    print(f"samples/s batched (B={a.batch}), latent : {a.n / med['batched_latent']:.2f}")
    print(f"samples/s one by one (B=1), latent   : {a.n / med['single_latent']:.2f}")
    print(f"batched / one-by-one throughput      : x{med['single_latent'] / med['batched_latent']:.2f}")
    print(f"latent K={a.k} / plain time, same samples and length: {med['batched_latent'] / med['batched_plain']:.3f} "
          f"(per-position floor with equal prefill: see RESULTS.md)")
    print("raw medians (s):", {k: round(v, 3) for k, v in med.items()})


if __name__ == "__main__":
    main()

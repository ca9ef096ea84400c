"""Multi-rank checks for a lent multi-GPU machine (issue 28), the checks tests/training/test_multirank.py makes on
two CPU ranks: ROI-SFT under DeepSpeed ZeRO-2 on N ranks against 1 rank with the same global batch, the N-rank
checkpoint of step 2 resumed on 1 rank, VLPO on N ranks (one prompt and its whole group each) against 1 rank with
the N prompts, and the latent diagnostics of `medlvr evaluate` sharded over N ranks against one process. Launched
with torchrun as docs/training.md §5.1 and docs/benchmarks.md print it.

    python benchmarks/gpu/multirank.py --ranks 8 --device cuda --out r.json    # bash benchmarks/gpu/run.sh does this
    python benchmarks/gpu/multirank.py --dry-run --out r.json                  # 2 CPU ranks, gloo (a test runs this)
    ... --keep DIR     keep every run's folder under DIR (to inspect a failed check; the tests read them)

Writes ONE JSON file: per check the figure and whether it passed; exits 1 when one fails. Figures: the largest
relative per-step loss difference and the largest absolute weight difference against the 1-rank run (fp32, tiny
model; NCCL reduces in another order than an accumulation, so the GPU bound is looser than the CPU one), whether
the ranks' rows of every global batch are disjoint and together the 1-rank batch, metrics and TensorBoard written
once; for VLPO the weight difference after 2 steps, whether both runs drew the same rollouts (token ids equal,
latent noise within the bound), whether every rank scored against the same reference (parameter sha256) and kept
whole groups; whether the sharded latent diagnostics equal one process's.

VLPO starts from a tiny policy taught the answer format for a few steps (`warm_start_policy`), so that rewards
differ within a group and the update is not zero; its prompts are of one question template (one token length),
so a rank's one-prompt batch and the 1-rank batch of N prompts meet no padding difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
VLPO_STEPS, VLPO_G = 2, 4  # VLPO_G: configs/vlpo_tiny.yaml's rollout.num_generations
LOSS_RTOL = {"cpu": 1e-6, "cuda": 1e-4}
WEIGHT_ATOL = {"cpu": 1e-6, "cuda": 1e-4}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"multirank: {' '.join(cmd[:4])} ... failed:\n{p.stderr[-3000:]}")


def _torchrun(ranks: int, module: str, config: str, sets: list[str]) -> list[str]:
    return [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port",
            str(_port()), "-m", module, "--config", config, *[a for s in sets for a in ("--set", s)]]


def sft(ranks: int, global_micro: int, corpus: Path, out: Path, device: str, *extra: str) -> Path:
    """One ROI-SFT run of STEPS steps, global batch 2 x global_micro rows, on `ranks` ranks."""
    sets = [f"data.corpus={corpus}", f"run.out_dir={out}", "engine.backend=deepspeed", f"engine.device={device}",
            f"run.max_steps={STEPS}", f"run.save_every={RESUME_AT}", "run.keep_last=0", "run.progress=false",
            f"run.tensorboard={str(ranks > 1).lower()}", "run.log_samples=true", "run.micro_batch_size=2",
            f"engine.grad_accum={global_micro // ranks}", *extra]
    _run(_torchrun(ranks, "medlvr.training.sft.recipe", "configs/sft_tiny.yaml", sets))
    return out


def resume_killed_at(src: Path, out: Path) -> Path:
    """The folder a run killed right after its checkpoint of step RESUME_AT leaves: that checkpoint and the
    metrics lines up to it."""
    ck = src / "checkpoints" / f"step-{RESUME_AT:07d}"
    shutil.copytree(ck, out / "checkpoints" / ck.name)
    lines = (src / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("".join(x + "\n" for x in lines[:RESUME_AT]))
    return out


def warm_start_policy(out: Path, k: int = 2, steps: int = 25, seed: int = 0) -> Path:
    """A stand-in ROI-SFT checkpoint for VLPO: the tiny model taught 'Start, K latents, End, a random option
    letter, EOS' on three synthetic prompts (the letter does not depend on the question, so rewards differ within
    a group). Saved as a `load_checkpoint`-able folder, returned."""
    import torch

    from medlvr.training.latent_decode import DecodeConfig, latent_generate
    from medlvr.training.model import save_checkpoint
    from medlvr.training.replay import replay
    from medlvr.training.tiny import build_tiny
    from medlvr.training.vlpo.data import build_prompt_batch, synthetic_samples

    torch.manual_seed(seed)
    b = build_tiny(seed=0)
    b.model.model.visual.requires_grad_(False)
    samples = synthetic_samples(3, out / "images", seed=seed)
    g, tok = torch.Generator().manual_seed(seed), b.processor.tokenizer
    opt = torch.optim.Adam([p for p in b.model.parameters() if p.requires_grad], lr=3e-3)
    batch = build_prompt_batch(b.processor, samples)
    for _ in range(steps):
        o = latent_generate(b.model, batch.inputs, b.ids, DecodeConfig(k_latent=k, max_new_tokens=k + 2,
                                                                         eos_token_ids=()))
        letters = [s.options[int(torch.randint(len(s.options), (1,), generator=g))][0] for s in samples]
        seq = torch.cat([o.sequences, torch.tensor([[tok.convert_tokens_to_ids(x), tok.eos_token_id]
                                                    for x in letters])], dim=1)
        r = replay(b.model, batch.inputs, seq, torch.ones_like(seq, dtype=torch.bool), o.z, b.ids, 1.0)
        loss = -r.token_logprobs[:, -2:].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_checkpoint(b.model.eval(), b.processor, out / "model")


def vlpo(ranks: int, prompts_per_step: int, policy: Path, out: Path, device: str) -> Path:
    """VLPO_STEPS steps of configs/vlpo_tiny.yaml from `policy`, `prompts_per_step` prompts on each of `ranks`."""
    sets = ["engine.backend=deepspeed", f"engine.device={device}", f"run.out_dir={out}",
            f"run.max_steps={VLPO_STEPS}", "run.save_every=0", f"run.prompts_per_step={prompts_per_step}",
            "run.log_samples=true", "run.progress=false", f"run.tensorboard={str(ranks > 1).lower()}",
            f"model.path={policy}", "data.synthetic_templates=[0]"]
    _run(_torchrun(ranks, "medlvr.training.vlpo.trainer", "configs/vlpo_tiny.yaml", sets))
    return out


def rollouts(out: Path, ranks: int, step: int) -> dict:
    """The step's recorded rollouts of all ranks, rows in rank order (= the 1-rank run's prompt order)."""
    from safetensors.numpy import load_file as load_np

    parts = [load_np(out / "samples" / "rollouts" / f"step-{step:07d}.rank-{r}.safetensors") for r in range(ranks)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def vlpo_checks(one: Path, many: Path, ranks: int, bound: float) -> dict:
    """The VLPO checks of the N-rank run `many` against the 1-rank run `one` (module docstring)."""
    same_tokens, noise_diff = True, 0.0
    for step in range(1, VLPO_STEPS + 1):
        a, b = rollouts(one, 1, step), rollouts(many, ranks, step)
        same_tokens &= all(np.array_equal(a[k], b[k]) for k in ("sequences", "gen_mask", "sampled_mask"))
        if a["noise"].shape == b["noise"].shape:
            noise_diff = max(noise_diff, float(np.abs(a["noise"].astype(np.float64) - b["noise"]).max()))
        else:
            noise_diff = float("inf")
    refs = [json.loads((d / "samples" / f"reference.rank-{r}.json").read_text())["reference_sha256"]
            for d, n in ((one, 1), (many, ranks)) for r in range(n)]
    logs = [[json.loads(x) for x in (many / "samples" / f"rank-{r}.jsonl").open()] for r in range(ranks)]
    groups = all(len(d["sample_ids"]) == 1 and len(d["reward"]) == VLPO_G for lg in logs for d in lg)
    steps = [json.loads(x)["step"] for x in (many / "metrics.jsonl").read_text().splitlines()]
    diff = weight_diff(one, many, "final/model/model.safetensors")
    return {
        "vlpo_weight_abs_diff": {"value": diff, "bound": bound, "passed": diff <= bound},
        "vlpo_same_rollouts": {"noise_abs_diff": noise_diff, "bound": bound,
                               "passed": same_tokens and noise_diff <= bound},
        "vlpo_reference_identical_on_every_rank": {"passed": None not in refs and len(set(refs)) == 1},
        "vlpo_whole_groups_per_rank": {"passed": groups},
        "vlpo_metrics_once_by_rank0": {"passed": steps == list(range(1, VLPO_STEPS + 1))
                                       and tb_files(many) == 1},
    }


def tb_files(out: Path) -> int:
    return len(list((out / "tb").rglob("events.out.tfevents.*")))


def diagnostics(ranks: int, out: Path, device: str) -> dict:
    """`medlvr evaluate` with a `latent_diagnostics:` section on the sample benchmarks, sharded over `ranks`
    (torchrun) and in one process; the check: both latent_diagnostics.json equal."""
    import yaml

    cfg = {"data_root": str(out / "bench"), "sample_data": True, "limit": 5,
           "benchmarks": {"slake": {}},
           "models": [{"name": "medlvr", "path": "tiny", "tiny_seed": 1, "k_latent": 2}],
           "decode": {"batch_size": 2, "max_new_tokens": 6, "max_pixels": 12544, "threads": 1,
                      "device": "auto" if device == "cuda" else "cpu"},  # auto: cuda:LOCAL_RANK
           "latent_diagnostics": {"k_values": [1, 2], "probe_fraction": 0.5}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.yaml").write_text(yaml.safe_dump(cfg))
    _run([str(Path(sys.executable).parent / "medlvr"), "evaluate", "--config", str(out / "eval.yaml"),
          "--out", str(out / "one"), "--quiet"])
    _run([str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(ranks), "--master_port", str(_port()),
          "-m", "medlvr.evaluation.cli", "--config", str(out / "eval.yaml"), "--out", str(out / "sharded"),
          "--quiet"])
    one, sharded = (json.loads((out / d / "latent_diagnostics.json").read_text()) for d in ("one", "sharded"))
    return {"diagnostics_sharded_equal_one_process": {"passed": one == sharded and bool(one.get("medlvr")),
                                                      "rank_files_left": len(list((out / "sharded").glob(
                                                          "latent_diagnostics.rank*")))}}


def losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def weight_diff(a: Path, b: Path, what: str = f"checkpoints/step-{STEPS:07d}/model/model.safetensors") -> float:
    wa, wb = (load_file(d / what) for d in (a, b))
    if sorted(wa) != sorted(wb):
        return float("inf")
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
    ap.add_argument("--keep", help="keep every run's folder under this folder (default: a temporary one)")
    a = ap.parse_args(argv)
    ranks, device = (2, "cpu") if a.dry_run else (a.ranks, a.device)
    if ranks < 2:
        raise SystemExit("multirank: --ranks must be at least 2")
    from medlvr.corpus.sample_corpus import build_sample_corpus

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multirank-") as tmp:
        tmp = Path(a.keep) if a.keep else Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        corpus = build_sample_corpus(tmp / "corpus")
        one = sft(1, ranks, corpus, tmp / "one", device)
        many = sft(ranks, ranks, corpus, tmp / "many", device)
        resumed = sft(1, ranks, corpus, resume_killed_at(many, tmp / "resumed"), device, "run.resume=auto")
        metric_steps = [json.loads(x)["step"] for x in (many / "metrics.jsonl").read_text().splitlines()]
        policy = warm_start_policy(tmp / "vlpo_policy")
        vlpo_one = vlpo(1, ranks, policy, tmp / "vlpo_one", device)
        vlpo_many = vlpo(ranks, 1, policy, tmp / "vlpo_many", device)
        checks = {
            "sft_loss_rel_diff": (loss_diff(one, many), LOSS_RTOL[device]),
            "sft_weight_abs_diff": (weight_diff(one, many), WEIGHT_ATOL[device]),
            "resume_n_to_1_weight_abs_diff": (weight_diff(one, resumed), WEIGHT_ATOL[device]),
        }
        res = {"device": device if device == "cpu" else _gpu_name(), "ranks": ranks, "command": " ".join(sys.argv),
               "platform": platform.platform(),
               "checks": {k: {"value": v, "bound": b, "passed": v <= b} for k, (v, b) in checks.items()}}
        res["checks"]["rows_disjoint_and_equal_to_one_rank"] = {"passed": rows_split(one, many, ranks)}
        res["checks"]["metrics_once_by_rank0"] = {"passed": metric_steps == list(range(1, STEPS + 1))
                                                  and tb_files(many) == 1}
        res["checks"].update(vlpo_checks(vlpo_one, vlpo_many, ranks, WEIGHT_ATOL[device]))
        res["checks"].update(diagnostics(ranks, tmp / "diagnostics", device))
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

"""One prepared GPU benchmark (issue 18 §3): Qwen2.5-VL-7B shapes, random bf16 weights, one GPU, one JSON file.

    bash benchmarks/gpu/run.sh                       # on the GPU machine: sdpa, then flash-attention if it imports
    python benchmarks/gpu/driver.py --attn sdpa,flash_attention_2 --out r.json
    python benchmarks/gpu/driver.py --dry-run --out r.json   # the same code, tiny shape, CPU (a test runs this)

Figures (every one lands in the JSON, with the device name and the settings):
(a) decode: time per latent step / time per text step at B = 1 and B = 16            goal <= 1.05
(b) decode: K = 8 latent generation / plain generation, 64 answer tokens, B = 1 and 16  goal <= 1.10 (paper 1.15)
(c) ROI-SFT step (micro-batch 4, 1280*28^2 pixels, gradient checkpointing, self-fed latents, AdamW): tokens/s,
    model FLOPs utilisation of the language model and of the vision tower separately, peak memory   goal >= 40%
(d) VLPO step vs GRPO step on the same rollouts (G = 8, 2 prompts, 512 new tokens, reference model; updates in
    micro-batches of 4 trajectories with gradient checkpointing): phase times, peak memory, ratio (goal <= 1.15);
    peak memory of one replay forward + backward, chunked vs unchunked log-softmax (goal: chunked <= 1/4)
Full width everywhere. When a training step at full depth does not fit the GPU (weights + gradients + AdamW state in
bf16), (c)/(d) halve the number of decoder layers until it does and record `layers` (utilisation per layer is what
counts). EOS is disabled: every run generates exactly the asked length.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmark scripts beside this folder
from bench_vlpo import update  # noqa: E402

from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from medlvr.training.latent_decode import DecodeConfig, latent_generate  # noqa: E402
from medlvr.training.metrics import decoder_params, peak_flops, train_flops  # noqa: E402
from medlvr.training.model import set_pixel_budget  # noqa: E402
from medlvr.training.replay import replay  # noqa: E402
from medlvr.training.sampling import LOGPROB_CHUNK  # noqa: E402
from medlvr.training.sft.collate import collate  # noqa: E402
from medlvr.training.sft.data import ShardStream, shard_files  # noqa: E402
from medlvr.training.sft.forward import sft_forward  # noqa: E402
from medlvr.training.sft.losses import answer_nll_sum, roi_loss_sum, sft_loss  # noqa: E402
from medlvr.training.tiny import SHAPES, build_tiny  # noqa: E402
from medlvr.training.vlpo.algos import LossConfig  # noqa: E402
from medlvr.training.vlpo.config import AlgoConfig, RolloutConfig  # noqa: E402
from medlvr.training.vlpo.core import collect, decode_config, vision_token_ids  # noqa: E402
from medlvr.training.vlpo.data import build_prompt_batch, synthetic_samples  # noqa: E402
from medlvr.training.vlpo.rollout import LocalLatentRollout  # noqa: E402

QUESTION = "Which organ is abnormal? A. liver B. kidney C. spleen D. lung."


@dataclasses.dataclass(frozen=True)
class Settings:
    shape: str = "7b"
    device: str = "cuda"
    dtype: str = "bfloat16"
    attn: str = "sdpa"
    repeats: int = 3
    k: int = 8
    answer_tokens: int = 64  # (b)
    decode_image: int = 448  # side of the decode prompts' random images
    sft_micro_batch: int = 4
    sft_max_pixels: int = 1280 * 28 * 28
    vlpo_prompts: int = 2
    vlpo_g: int = 8
    vlpo_new_tokens: int = 512
    vlpo_image: int = 448
    vlpo_micro_batch: int = 4  # trajectories per replay forward/backward (gradient checkpointing on)


DRY_RUN = Settings(shape="tiny", device="cpu", dtype="float32", repeats=1, answer_tokens=16, decode_image=112,
                   sft_max_pixels=28 * 28 * 64, vlpo_new_tokens=24, vlpo_image=112)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_reset(dev: torch.device) -> int | None:
    if dev.type != "cuda":
        return None
    _sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    return torch.cuda.memory_allocated(dev)


def _peak_gib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


def _build(s: Settings, layers: int | None = None):
    cfg = SHAPES[s.shape] if layers is None else dataclasses.replace(SHAPES[s.shape], layers=layers)
    return build_tiny(seed=0, cfg=cfg, attn_implementation=s.attn, dtype=getattr(torch, s.dtype), device=s.device)


def _median_time(fn, repeats: int, dev: torch.device) -> float:
    fn()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _prompts(processor, n: int, side: int, dev: torch.device):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 255, (side, side, 3), generator=g, dtype=torch.uint8).numpy())
              for _ in range(n)]
    msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text] * n, images=images, padding=True, return_tensors="pt")
    return {k: v.to(dev) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ (a), (b)
def bench_decode(b, s: Settings) -> dict:
    dev = b.model.device
    out = {}
    for B in (1, 16):
        batch = _prompts(b.processor, B, s.decode_image, dev)
        cfg = DecodeConfig(k_latent=s.k, max_new_tokens=s.k + 2 + s.answer_tokens, eos_token_ids=(), time_steps=True)
        runs = [latent_generate(b.model, batch, b.ids, cfg) for _ in range(s.repeats + 1)][1:]  # first: warm-up
        # steps of one run (Start rides in the prefill): 0..K-2 feed a latent, K-1 feeds the last latent together
        # with <Medlvr_End> (2 positions, left out), K.. sample text and forward it; the last step has no forward
        n = len(runs[0].step_times)
        latent_step = statistics.median(r.step_times[i] for r in runs for i in range(s.k - 1))
        text_step = statistics.median(r.step_times[i] for r in runs for i in range(s.k, n - 1))
        assert all(r.step_latent_rows[i] == B for r in runs for i in range(s.k))
        plain = DecodeConfig(k_latent=0, max_new_tokens=s.answer_tokens, eos_token_ids=())
        latent = DecodeConfig(k_latent=s.k, max_new_tokens=s.k + 2 + s.answer_tokens, eos_token_ids=())
        t_plain = _median_time(lambda: latent_generate(b.model, batch, b.ids, plain), s.repeats, dev)
        t_latent = _median_time(lambda: latent_generate(b.model, batch, b.ids, latent), s.repeats, dev)
        out[f"B{B}"] = {
            "latent_step_s": latent_step, "text_step_s": text_step, "a_latent_over_text_step": latent_step / text_step,
            "plain_generate_s": t_plain, "latent_generate_s": t_latent, "b_latent_over_plain": t_latent / t_plain,
            "prompt_tokens": int(batch["input_ids"].shape[1]),
        }
    return out


# ------------------------------------------------------------------------------------------------------ (c)
def _sft_step(model, opt, batch, ids, ip, dev):
    f = sft_forward(model, batch, ids, ip, mode="self_fed", grad="detach")
    nll = answer_nll_sum(f.token_logprobs, batch.label_mask.to(dev))
    loss = sft_loss(nll, batch.n_label, roi_loss_sum(f.h, f.targets, batch.roi_mask), batch.n_roi, 0.1)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_sft(b, s: Settings, corpus: Path) -> dict:
    model, proc, ids, dev = b.model, b.processor, b.ids, b.model.device
    set_pixel_budget(proc, 56 * 56, s.sft_max_pixels)
    model.model.visual.requires_grad_(False)  # frozen vision tower and merger (the default)
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-7)
    stream = ShardStream(shard_files(corpus, "train"), seed=0)
    batch = collate(stream.next_rows(s.sft_micro_batch), proc, ids, s.k, min_pixels=56 * 56,
                    max_pixels=s.sft_max_pixels)
    batch.prompts = {k: v.to(dev) for k, v in batch.prompts.items()}
    _peak_reset(dev)
    t = _median_time(lambda: _sft_step(model, opt, batch, ids, proc.image_processor, dev), s.repeats, dev)
    peak_mem = _peak_gib(dev)
    tokens = batch.n_tokens
    seq = batch.prompts["input_ids"].shape[1] + batch.sequences.shape[1]
    patches = int(batch.prompts["pixel_values"].shape[0])
    n_dec, n_vis = decoder_params(model)
    tc = model.config.text_config
    extra = int(batch.prompts["attention_mask"].sum()) + s.k * s.sft_micro_batch  # the no-grad latent pass
    lm_flops = train_flops(n_dec, 0, tc.num_hidden_layers, tc.hidden_size, tokens, seq, 0, extra)
    vis_flops = train_flops(0, n_vis, 0, 0, 0, 0, patches)
    peak = peak_flops(dev)
    res = {"step_s": t, "tokens": tokens, "tokens_per_s": tokens / t, "seq_len": seq, "patch_tokens": patches,
           "lm_flops": lm_flops, "vision_flops": vis_flops, "peak_memory_gib": peak_mem, "peak_bf16_flops": peak}
    if peak:
        res.update(mfu_lm=lm_flops / t / peak, mfu_vision=vis_flops / t / peak,
                   mfu_total=(lm_flops + vis_flops) / t / peak)
    return res


# ------------------------------------------------------------------------------------------------------ (d)
def _replay_peak(policy, exp, ids, chunk: int, micro: int) -> float | None:
    """Peak memory above the resting state of one replay forward + backward over `micro` trajectories."""
    dev = policy.device
    base = _peak_reset(dev)
    out, idx = exp.out, torch.arange(micro)
    r = replay(policy, exp.batch.inputs, out.sequences[idx], out.gen_mask[idx], out.z[idx], ids,
               out.logprob_temperature, prompt_index=out.prompt_index[idx],
               banned_ids=(ids.latent, *vision_token_ids(policy)), logprob_chunk=chunk)
    (r.token_logprobs.sum() + r.mu.float().sum()).backward()
    policy.zero_grad(set_to_none=True)
    return None if base is None else (torch.cuda.max_memory_allocated(dev) - base) / 2**30


def bench_vlpo(b, s: Settings, image_dir: Path) -> dict:
    model, proc, ids, dev = b.model, b.processor, b.ids, b.model.device
    model.model.visual.requires_grad_(False)
    batch = build_prompt_batch(proc, synthetic_samples(s.vlpo_prompts, image_dir, size=s.vlpo_image))
    batch.inputs = {k: v.to(dev) if hasattr(v, "to") else v for k, v in batch.inputs.items()}
    rcfg = RolloutConfig(num_generations=s.vlpo_g, k_latent=s.k, max_new_tokens=s.vlpo_new_tokens)
    dcfg = dataclasses.replace(decode_config(rcfg, s.k, banned_ids=vision_token_ids(model)), eos_token_ids=())
    ref = copy.deepcopy(model).requires_grad_(False)
    N = s.vlpo_prompts * s.vlpo_g
    micro = s.vlpo_micro_batch
    vlpo_cfg = LossConfig(beta=0.04, lambda_lat=1.0, latent_sigma=0.1, latent_sigma_relative=True)
    grpo_cfg = dataclasses.replace(vlpo_cfg, lambda_lat=0.0)
    rollout = LocalLatentRollout(model, ids)
    rec: dict[str, list[float]] = {}
    for r in range(s.repeats + 1):  # repeat 0: warm-up
        _peak_reset(dev)
        exp = collect(model, ref, rollout, batch, ids, dcfg, AlgoConfig(), proc.tokenizer, micro_batch=micro,
                      generator=torch.Generator(device=dev).manual_seed(r))
        exp.advantages = torch.linspace(-1, 1, exp.advantages.numel(), device=exp.advantages.device)
        rollout_peak = _peak_gib(dev)
        res = {}
        for name, lcfg in ([("vlpo", vlpo_cfg), ("grpo", grpo_cfg)] if r % 2 else
                           [("grpo", grpo_cfg), ("vlpo", vlpo_cfg)]):
            policy = copy.deepcopy(model)
            times: dict[str, float] = {}
            _peak_reset(dev)
            total = update(policy, exp, ids, lcfg, micro, times, gradient_checkpointing=True)
            res[name] = (total, times, _peak_gib(dev))
            del policy
            gc.collect()
        if r == 0:
            continue
        before = exp.times["rollout"] + exp.times["reward"] + exp.times["ref"]
        for k in ("rollout", "reward", "ref"):
            rec.setdefault(f"time_{k}_s", []).append(exp.times[k])
        for name, (total, times, peak_mem) in res.items():
            rec.setdefault(f"{name}_update_s", []).append(total)
            rec.setdefault(f"{name}_replay_s", []).append(times["replay"])
            rec.setdefault(f"{name}_backward_s", []).append(times["backward"])
            rec.setdefault(f"{name}_optim_s", []).append(times["optim"])
            rec.setdefault(f"{name}_step_s", []).append(before + total)
            if peak_mem is not None:
                rec.setdefault(f"{name}_update_peak_memory_gib", []).append(peak_mem)
        if rollout_peak is not None:
            rec.setdefault("rollout_peak_memory_gib", []).append(rollout_peak)
        rec.setdefault("vlpo_over_grpo_step", []).append((before + res["vlpo"][0]) / (before + res["grpo"][0]))
    out = {k: statistics.median(v) for k, v in rec.items()}
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    chunked, unchunked = _replay_peak(model, exp, ids, LOGPROB_CHUNK, micro), None
    with contextlib.suppress(torch.cuda.OutOfMemoryError):
        unchunked = _replay_peak(model, exp, ids, 10**12, micro)
    out.update(trajectories=N, generated_positions=int(exp.out.sequences.shape[1]),
               replay_peak_chunked_gib=chunked, replay_peak_unchunked_gib=unchunked,
               replay_chunked_over_unchunked=None if not (chunked and unchunked) else chunked / unchunked,
               replay_unchunked_oom=chunked is not None and unchunked is None)
    del ref
    return out


def _fit_depth(fn, s: Settings, full_layers: int) -> dict:
    """Run fn(bundle) at full depth; on CUDA out-of-memory halve the decoder layers and retry."""
    layers = full_layers
    while True:
        b = _build(s, layers)
        try:
            res = fn(b)
            res["layers"], res["full_layers"] = layers, full_layers
            return res
        except torch.cuda.OutOfMemoryError:
            if layers == 1:
                raise
            layers = max(1, layers // 2)
        finally:
            del b
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def run(s: Settings) -> dict:
    dev = torch.device(s.device)
    t_start = time.perf_counter()
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})"
    work = Path(tempfile.mkdtemp(prefix="medlvr_gpu_bench_"))
    corpus = build_sample_corpus(work / "corpus")
    result = {"device": device_name, "settings": dataclasses.asdict(s), "torch": torch.__version__}
    full_layers = SHAPES[s.shape].layers
    t0 = time.perf_counter()
    b = _build(s)
    result["build_s"] = time.perf_counter() - t0
    result["decode"] = bench_decode(b, s)
    del b
    gc.collect()
    result["sft"] = _fit_depth(lambda bb: bench_sft(bb, s, corpus), s, full_layers)
    result["vlpo"] = _fit_depth(lambda bb: bench_vlpo(bb, s, work / "images"), s, full_layers)
    result["total_s"] = time.perf_counter() - t_start
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--dry-run", action="store_true", help="tiny shape on CPU, smaller sizes: the same code paths")
    ap.add_argument("--attn", default="sdpa", help="comma-separated: sdpa, flash_attention_2 (skipped when "
                                                   "flash_attn does not import), eager")
    ap.add_argument("--budget-s", type=float, default=240.0, help="start a further --attn only within this time")
    ap.add_argument("--repeats", type=int, default=0, help="0: the settings' default")
    ap.add_argument("--shape", default="", choices=["", *sorted(SHAPES)])
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    base = DRY_RUN if a.dry_run else Settings()
    base = dataclasses.replace(base, **({"repeats": a.repeats} if a.repeats else {}),
                               **({"shape": a.shape} if a.shape else {}))
    if base.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run for the CPU check")
    if a.dry_run:
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = {"device": None, "command": "python benchmarks/gpu/driver.py " + " ".join(argv), "runs": {},
              "skipped": {}}
    for attn in a.attn.split(","):
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            result["skipped"][attn] = "flash_attn does not import"
            continue
        if result["runs"] and time.perf_counter() - t0 > a.budget_s:
            result["skipped"][attn] = f"time budget {a.budget_s:.0f} s spent"
            continue
        run_result = run(dataclasses.replace(base, attn=attn))
        result["device"] = run_result.pop("device")
        result["runs"][attn] = run_result
    result["total_s"] = time.perf_counter() - t0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)  # atomic: a killed run leaves no half-written JSON
    print(json.dumps({"device": result["device"], "total_s": round(result["total_s"], 1), "out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

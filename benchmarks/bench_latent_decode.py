"""Latent-decoding speed ratios (issue 5), each against a baseline measured in the same run on the same model.

(a) time per latent step / time per text step                              goal <= 1.05
(b) end-to-end latent generation (K=8) / plain generation, same answer length  goal <= 1.10 (paper 158.0/137.9 = 1.15)
(c) batched (B=16) throughput / one-by-one throughput                      higher is better
(d) G=8 samples from one shared prefill vs eight separate prefills          higher is better

Usage (CPU, tiny model):
    HF_HUB_OFFLINE=1 python benchmarks/bench_latent_decode.py
GPU at a realistic shape (random weights, bf16):
    HF_HUB_OFFLINE=1 python benchmarks/bench_latent_decode.py --shape 7b --device cuda --dtype bfloat16

Every figure is the median over `--repeats` runs; baseline and candidate runs are interleaved so that load from
other processes hits both alike. EOS is disabled so that every run generates exactly the requested length.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.training.latent_decode import DecodeConfig, latent_generate  # noqa: E402
from medlvr.training.tiny import SHAPES, build_tiny  # noqa: E402

QUESTIONS = ["Describe the scan.", "What is the most likely diagnosis? Answer briefly.",
             "Which organ is abnormal? A. liver B. kidney C. spleen D. lung.", "Is there a pleural effusion?"]


def make_prompts(processor, sizes, seed=0):
    texts, images = [], []
    for i, (h, w) in enumerate(sizes):
        msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[i % 4]}]}]
        texts.append(processor.apply_chat_template(msg, tokenize=False, add_generation_prompt=True))
        rng = np.random.default_rng(seed + i)
        images.append(Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)))
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def run(model, batch, ids, **cfg):
    return latent_generate(model, batch, ids, DecodeConfig(eos_token_ids=(), **cfg))


def interleaved(fns, repeats):
    """Median wall time (s) of each zero-argument fn, runs interleaved, after one warm-up each."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--image", type=int, default=448, help="image side in px (448 -> 256 visual tokens)")
    ap.add_argument("--answer", type=int, default=16, help="answer tokens after <Medlvr_End>")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    b = build_tiny(seed=0, cfg=SHAPES[args.shape], dtype=dtype, device=args.device)
    model, ids = b.model, b.ids
    n_params = sum(p.numel() for p in model.parameters())
    S, K, A, R = args.image, args.k, args.answer, args.repeats
    one = make_prompts(b.processor, [(S, S)])
    print(f"torch {torch.__version__}  device {args.device}  dtype {args.dtype}  threads {torch.get_num_threads()}  "
          f"shape {args.shape} ({n_params / 1e6:.1f} M params)  image {S}x{S} -> "
          f"{int(one['image_grid_thw'][0].prod()) // 4} visual tokens, prompt {one['input_ids'].shape[1]} tokens  "
          f"K={K}  answer={A}  repeats={R}")

    # (a) per-step time by mode, from the decoder's own step timer (forced Start, K latent, End, A text)
    res = {}
    for bsz in (1, 16):
        batch = make_prompts(b.processor, [(S, S)] * bsz)
        lat, txt = [], []
        for _ in range(R + 1):
            # unfused, so that every step is of one kind (Start, K latents, End, then text)
            out = run(model, batch, ids, k_latent=K, max_new_tokens=K + 2 + A, time_steps=True, fuse_control=False)
            steps = out.step_times[:-1]  # the last step has no forward
            lat.append(statistics.median(steps[1 : 1 + K]))  # steps whose input is a latent vector
            txt.append(statistics.median(steps[K + 2 :]))  # steps whose input is a sampled text token
        lat_s, txt_s = statistics.median(lat[1:]), statistics.median(txt[1:])
        res[f"a_B{bsz}"] = lat_s / txt_s
        if bsz == 1:
            txt_b1 = txt_s
        print(f"(a) B={bsz:2d}: latent step {lat_s * 1e3:.3f} ms, text step {txt_s * 1e3:.3f} ms, "
              f"ratio {lat_s / txt_s:.3f}  (goal <= 1.05)")

    # (b) end to end, one prompt: Start + K latents + End + A answer tokens vs A plain tokens; the default decoder
    # fuses the forced Start into the prefill and End into the last latent step (K extra forwards, not K + 2)
    t_lat, t_unfused, t_plain = interleaved([
        lambda: run(model, one, ids, k_latent=K, max_new_tokens=K + 2 + A),
        lambda: run(model, one, ids, k_latent=K, max_new_tokens=K + 2 + A, fuse_control=False),
        lambda: run(model, one, ids, k_latent=0, max_new_tokens=A)], R)
    res["b"] = t_lat / t_plain
    res["b_unfused"] = t_unfused / t_plain
    # floor for ANY implementation: the K latent inputs are K sequential forwards, each at least a text step
    floor = (t_plain + K * txt_b1) / t_plain
    print(f"(b) latent K={K} {t_lat * 1e3:.1f} ms (unfused {t_unfused * 1e3:.1f}) vs plain {t_plain * 1e3:.1f} ms "
          f"for {A} answer tokens: ratio {t_lat / t_plain:.3f} (unfused {t_unfused / t_plain:.3f}; goal <= 1.10; "
          f"paper 1.15); floor from K extra text-step costs {floor:.3f}, measured/floor {t_lat / t_plain / floor:.3f}")

    # (c) 16 prompts with different image sizes: one left-padded batch vs one by one
    sizes = [(S - 28 * (i % 4), S - 28 * ((i // 4) % 4)) for i in range(16)]
    batch16 = make_prompts(b.processor, sizes)
    singles = [make_prompts(b.processor, [s], seed=i) for i, s in enumerate(sizes)]
    cfg = dict(k_latent=K, max_new_tokens=K + 2 + A)
    t_batch, t_seq = interleaved([lambda: run(model, batch16, ids, **cfg),
                                  lambda: [run(model, s, ids, **cfg) for s in singles]], max(3, R // 2))
    res["c"] = t_seq / t_batch
    print(f"(c) B=16 batched {t_batch * 1e3:.1f} ms vs one-by-one {t_seq * 1e3:.1f} ms: "
          f"throughput x{t_seq / t_batch:.2f}")

    # (d) G=8 samples of one prompt: shared prefill (cache repeated) vs 8 separate prefills, and vs one prefill
    # over 8 copies of the prompt; max_new_tokens=1 isolates the prefill (no decode forward)
    copies8 = make_prompts(b.processor, [(S, S)] * 8)  # same image and question 8 times
    t_shared, t_sep, t_copies = interleaved([
        lambda: run(model, one, ids, k_latent=K, max_new_tokens=1, num_samples=8, temperature=0.9),
        lambda: [run(model, one, ids, k_latent=K, max_new_tokens=1, temperature=0.9) for _ in range(8)],
        lambda: run(model, copies8, ids, k_latent=K, max_new_tokens=1, temperature=0.9),
    ], R)
    res["d"] = t_sep / t_shared
    print(f"(d) G=8 shared prefill {t_shared * 1e3:.1f} ms vs 8 separate prefills {t_sep * 1e3:.1f} ms: "
          f"x{t_sep / t_shared:.2f}; vs one batched prefill of 8 copies {t_copies * 1e3:.1f} ms: "
          f"x{t_copies / t_shared:.2f}")
    # and whole G=8 rollouts (K latents + answer) from a shared prefill vs from 8 prompt copies
    cfg = dict(k_latent=K, max_new_tokens=K + 2 + A, temperature=0.9)
    t_roll_shared, t_roll_copies = interleaved([lambda: run(model, one, ids, num_samples=8, **cfg),
                                                lambda: run(model, copies8, ids, **cfg)], R)
    print(f"(d') G=8 full rollouts: shared prefill {t_roll_shared * 1e3:.1f} ms vs 8 prompt copies "
          f"{t_roll_copies * 1e3:.1f} ms: x{t_roll_copies / t_roll_shared:.2f}")
    print("RATIOS " + "  ".join(f"{k}={v:.3f}" for k, v in res.items()))


if __name__ == "__main__":
    main()

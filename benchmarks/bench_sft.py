"""ROI-SFT training-step throughput: self-fed (bptt, detach) vs teacher-forced latents, and the ROI-loss overhead.

    HF_HUB_OFFLINE=1 python benchmarks/bench_sft.py                       # tiny random model, CPU, fp32
    HF_HUB_OFFLINE=1 python benchmarks/bench_sft.py --shape 7b --device cuda --dtype bfloat16 --gc   # GPU session

One run builds the sample corpus, collates a fixed set of micro-batches once (collation is outside the timer) and
times full training steps (forward, backward, optimizer step) of every variant on the SAME batches, interleaved
over repeats (median), so the ratios come from one run on one machine. Tokens/s counts every non-pad token of a
step (prompt with image tokens + completion). On CUDA it also prints MFU (6N + attention + vision forward FLOPs
over the device's bf16 peak, `medlvr.training.metrics`). Random weights at the real Qwen2.5-VL shapes (`--shape 3b|7b`);
with `--dtype bfloat16` the weights themselves are bf16 and the optimizer is SGD without state by default (a 7B
AdamW state would not fit one 80 GB card without ZeRO; throughput of the step is what is measured).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from medlvr.training.engine import apply_freeze  # noqa: E402
from medlvr.training.metrics import decoder_params, peak_flops, train_flops  # noqa: E402
from medlvr.training.model import set_pixel_budget  # noqa: E402
from medlvr.training.sft.collate import collate  # noqa: E402
from medlvr.training.sft.data import ShardStream, shard_files  # noqa: E402
from medlvr.training.sft.forward import sft_forward  # noqa: E402
from medlvr.training.sft.losses import answer_nll_sum, roi_loss_sum, sft_loss  # noqa: E402
from medlvr.training.tiny import SHAPES, build_tiny  # noqa: E402

VARIANTS = {  # name: (mode, grad, roi on)
    "self_fed_bptt": ("self_fed", "bptt", True),
    "self_fed_detach": ("self_fed", "detach", True),
    "teacher_forced": ("teacher_forced", "bptt", True),
    "self_fed_bptt_no_roi": ("self_fed", "bptt", False),
}


def step(model, opt, batch, ids, ip, mode, grad, roi_on, device):
    out = sft_forward(model, batch, ids, ip, mode=mode, grad=grad)
    nll = answer_nll_sum(out.token_logprobs, batch.label_mask.to(device))
    roi = roi_loss_sum(out.h, out.targets, batch.roi_mask) if roi_on else nll * 0
    loss = sft_loss(nll, batch.n_label, roi, batch.n_roi if roi_on else 0, 0.1)
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--batches", type=int, default=4, help="distinct micro-batches per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-pixels", type=int, default=28 * 28 * 16)
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing (bptt variants then skipped)")
    ap.add_argument("--optimizer", default="auto", choices=["auto", "adamw", "sgd"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--corpus", default="", help="corpus folder; default: sample shards built in a temp dir")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]

    corpus = args.corpus or str(build_sample_corpus(Path(tempfile.mkdtemp(prefix="bench_sft_"))))
    b = build_tiny(seed=0, cfg=SHAPES[args.shape], dtype=dtype, device=device)
    model, proc, ids = b.model, b.processor, b.ids
    set_pixel_budget(proc, 56 * 56, args.max_pixels)
    apply_freeze(model, True, True)
    model.train()
    if args.gc:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    use_adamw = args.optimizer == "adamw" or (args.optimizer == "auto" and dtype == torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6) if use_adamw else torch.optim.SGD(params, lr=1e-6)
    stream = ShardStream(shard_files(corpus, "train"), seed=0)
    batches = [collate(stream.next_rows(args.mbs), proc, ids, args.k, min_pixels=56 * 56,
                       max_pixels=args.max_pixels) for _ in range(args.batches)]
    for bt in batches:  # move once: the timer measures the step, not host-to-device copies
        bt.prompts = {k: v.to(device) for k, v in bt.prompts.items()}
    tokens = sum(bt.n_tokens for bt in batches)
    variants = {k: v for k, v in VARIANTS.items() if not (args.gc and v[1] == "bptt" and v[0] == "self_fed")}
    ip = proc.image_processor
    for name, (mode, grad, roi) in variants.items():  # warm-up (allocator, kernels)
        step(model, opt, batches[0], ids, ip, mode, grad, roi, device)
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, (mode, grad, roi) in variants.items():
            t0 = time.perf_counter()
            for bt in batches:
                step(model, opt, bt, ids, ip, mode, grad, roi, device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = peak_flops(device)
    n_dec, n_vis = decoder_params(model)
    tc = model.config.text_config
    seq = statistics.mean(bt.prompts["input_ids"].shape[1] + bt.sequences.shape[1] for bt in batches)
    patches = sum(int(bt.prompts["pixel_values"].shape[0]) for bt in batches)
    print(f"shape={args.shape} device={device} dtype={args.dtype} K={args.k} mbs={args.mbs} batches={args.batches} "
          f"repeats={args.repeats} gc={args.gc} optimizer={'adamw' if use_adamw else 'sgd'} tokens/repeat={tokens} "
          f"mean seq={seq:.0f} threads={args.threads}")
    print(f"{'variant':24s} {'s/repeat':>9s} {'tokens/s':>10s}" + ("   MFU" if peak else ""))
    for name, t in med.items():
        line = f"{name:24s} {t:9.3f} {tokens / t:10.0f}"
        if peak:
            extra = sum(int(bt.prompts['attention_mask'].sum()) + args.k * args.mbs for bt in batches) \
                if name == "self_fed_detach" else 0
            f = train_flops(n_dec, n_vis, tc.num_hidden_layers, tc.hidden_size, tokens, int(seq), patches, extra)
            line += f" {f / t / peak:6.1%}"
        print(line)
    if "self_fed_bptt" in med:
        print(f"ratio tokens/s self_fed_bptt / teacher_forced   = {med['teacher_forced'] / med['self_fed_bptt']:.3f}")
        print(f"ROI-loss overhead (self_fed_bptt vs no ROI)      = {med['self_fed_bptt'] / med['self_fed_bptt_no_roi'] - 1:+.1%}")
    print(f"ratio tokens/s self_fed_detach / teacher_forced = {med['teacher_forced'] / med['self_fed_detach']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

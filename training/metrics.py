"""Rank-0 training logs (progress bar, JSONL, TensorBoard) and the FLOP / MFU arithmetic, shared by the recipes.

`MetricsLogger(out_dir, enabled=eng.is_main, total_steps=S)`; `log(step, {...})` writes one JSON line to
`out_dir/metrics.jsonl` and scalars to TensorBoard (`out_dir/tb`), and updates the progress bar; ranks other
than 0 pass `enabled=False` and log nothing. `close()` flushes. `start_step` (the resumed checkpoint's step, 0 for
a fresh run) cuts `metrics.jsonl` and TensorBoard at that step, so a resumed run never repeats a step.

MFU (model FLOPs utilisation, nanoGPT / llm-foundry convention): training FLOPs per token
`6 * N + 12 * L * H * S` (N: trainable decoder parameters without the input embedding, L layers, H hidden size,
S sequence length), plus `2 * N_vision` per patch token for the vision forward, over the device's peak bf16
FLOP/s. Only meaningful on a GPU; on CPU it is not reported.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
                   "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: torch.device, override: float = 0.0) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device from its name (None on CPU or an unknown GPU)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def decoder_params(model) -> tuple[int, int]:
    """(trainable decoder parameters without the input embedding incl. lm_head, frozen-or-not vision params)."""
    emb = model.get_input_embeddings().weight
    n_dec = sum(p.numel() for n, p in model.named_parameters()
                if p.requires_grad and "visual" not in n and p is not emb)
    n_vis = sum(p.numel() for n, p in model.named_parameters() if "visual" in n)
    return n_dec, n_vis


def train_flops(n_dec: int, n_vis: int, layers: int, hidden: int, tokens: int, seq_len: int,
                patch_tokens: int, extra_forward_tokens: int = 0) -> float:
    """FLOPs of one training step: 6N per token + attention 12*L*H*S per token + 2*N_vis per patch token
    (frozen vision forward) + 2N per token of extra no-grad forwards (e.g. the detached self-fed latent pass)."""
    return ((6 * n_dec + 12 * layers * hidden * seq_len) * tokens + 2 * n_vis * patch_tokens
            + 2 * n_dec * extra_forward_tokens)


def cut_metrics(path: Path, last_step: int) -> None:
    """Keep only the lines of `path` with step <= `last_step` (atomic rewrite): a run resumed from the checkpoint
    of `last_step` (0: a fresh start) logs the later steps again, and no step may appear twice. A torn last line
    (killed mid-write) is dropped too."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(step, int) and step <= last_step:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def quiet_loading_bars() -> None:
    """No "Loading weights" / "Writing model shards" bars from transformers in a training command: the run's own
    progress (`MetricsLogger`) is the one display, and a pipe or log file gets no carriage-return animation."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def open_sample_log(out_dir: str | Path, rank: int, start_step: int):
    """`out_dir/samples/rank-R.jsonl` opened for appending (`run.log_samples`, both stages): THIS rank's rows of
    every optimizer step, one JSON line per step with its `step`, cut at the resumed step like metrics.jsonl."""
    path = Path(out_dir) / "samples" / f"rank-{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    cut_metrics(path, start_step)
    return open(path, "a")


class MetricsLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True, total_steps: int = 0, tensorboard: bool = True,
                 progress: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_metrics(self.path, start_step)
        self._file = open(self.path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events of steps > start_step that an interrupted run wrote
            self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=start_step + 1)
        self._lines_every = 0  # in a pipe: a plain line every this many steps (0: none)
        if progress and sys.stderr.isatty():  # a bar rewritten in place only on a terminal
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", file=sys.stderr,
                             dynamic_ncols=True, mininterval=1.0)
        elif progress:  # a pipe or a log file: no carriage-return animation, about ten plain lines per run
            self._lines_every, self._total, self._t0 = max(1, total_steps // 10), total_steps, time.perf_counter()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(f"train/{k}", v, step)
        shown = {k: f"{metrics[k]:.4g}" for k in ("loss", "ce", "roi", "reward_mean", "accuracy", "kl", "lr")
                 if isinstance(metrics.get(k), float)}
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(shown, refresh=False)
            self._bar.refresh()
        elif self._lines_every and (step % self._lines_every == 0 or step == self._total):
            values = " ".join(f"{k} {v}" for k, v in shown.items())
            print(f"train: step {step}/{self._total} {values} ({time.perf_counter() - self._t0:.0f}s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()

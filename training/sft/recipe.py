"""ROI-SFT recipe: setup -> train -> save (torchtune-shaped, readable top to bottom).

    python -m medlvr.training.sft.recipe --config configs/sft_tiny.yaml --set data.corpus=DIR [--set key=value ...]
    medlvr train-sft --config FILE [--set ...]                      (same, through the project CLI)
    deepspeed [--hostfile H] --module medlvr.training.sft.recipe --config FILE      (every rank runs this file)
    torchrun --nproc_per_node G -m medlvr.training.sft.recipe --config FILE

One optimizer step = `engine.grad_accum` micro-batches of `run.micro_batch_size` rows per rank. The loss of a
micro-batch is `nll_sum / (N_label / W) + lambda * roi_sum / (N_roi / W)` with N_label / N_roi counted over the
whole global batch (all micro-batches, all W ranks), so rank averaging gives the exact global means (Eq. 4 with
separate normalisers). Under Dagster Pipes (DAGSTER_PIPES_CONTEXT set) only RANK 0 opens the Pipes connection,
streams a log line every `run.log_every` steps and reports the final metrics and the checkpoint path
(`medlvr.training.pipes`). Checkpoints: `run.out_dir/checkpoints/step-XXXXXXX/` (`medlvr.training.checkpoints`),
with K saved next to the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from medlvr.corpus.config import add_config_arguments, exit_on_config_error
from medlvr.training.checkpoints import checkpoint_dir, prune_checkpoints, refuse_silent_overwrite, resolve_resume
from medlvr.training.engine import Engine, seed_everything
from medlvr.training.loading import load_model_or_tiny
from medlvr.training.metrics import (MetricsLogger, decoder_params, open_sample_log, peak_flops,
                                     quiet_loading_bars, train_flops)
from medlvr.training.model import set_pixel_budget
from medlvr.training.pipes import format_step, open_pipes, report_failure, scalar_metrics
from medlvr.training.sft.collate import collate
from medlvr.training.sft.config import ModelConfig, SFTConfig, load_sft_config
from medlvr.training.sft.data import DataPosition, ShardStream, shard_files
from medlvr.training.sft.forward import sft_forward
from medlvr.training.bottleneck import set_text_blind
from medlvr.training.sft.losses import answer_nll_sum, latent_cosine_sum, roi_loss_sum, sft_loss

def build_model(mc: ModelConfig):
    """(model, processor, LatentTokenIds) from the config: the offline tiny model or a LOCAL checkpoint."""
    return load_model_or_tiny(mc.path, mc.tiny_seed, mc.dtype, mc.attn_implementation)


def train(cfg: SFTConfig, *, on_step=None, on_log=None) -> dict:
    """Run to `max_steps`; returns {"metrics": last logged metrics, "checkpoint": final checkpoint path, ...}.

    on_step(step, metrics): called on every rank after each optimizer step (and its checkpoint, if any).
    on_log(step, metrics): called on rank 0 every `log_every` steps (Pipes log lines).
    """
    run, lt, ec = cfg.run, cfg.latent, cfg.engine
    refuse_silent_overwrite(run.out_dir, run.resume, run.replace)
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    seed_everything(ec.seed)
    out_dir = Path(run.out_dir)
    model, processor, ids = build_model(cfg.model)
    set_text_blind(model, lt.text_blind)  # every pass below, and the saved checkpoint's medlvr_latent.json
    set_pixel_budget(processor, cfg.data.min_pixels, cfg.data.max_pixels)

    world = int(os.environ.get("WORLD_SIZE", 1))
    files = [f for corpus in (cfg.data.corpus, *cfg.data.mix) for f in shard_files(corpus, cfg.data.split)]
    stream = ShardStream(files, seed=cfg.data.seed,
                         shuffle=cfg.data.shuffle, world=world, question_types=cfg.data.question_types)
    rows_per_step = run.micro_batch_size * ec.grad_accum * world
    steps = run.max_steps or max(1, math.ceil(run.epochs * stream.rows_per_epoch / rows_per_step))
    eng = Engine(model, ec, total_steps=steps, micro_batch_size=run.micro_batch_size,
                 token_ids=(ids.start, ids.latent, ids.end))
    stream.rank, stream.world = eng.rank, eng.world_size
    resume_dir = resolve_resume(out_dir, run.resume)
    if resume_dir is not None:
        extra = eng.resume(resume_dir)
        stream.position = DataPosition(**extra["data_position"])
    vision_grad = not (ec.freeze_vision_tower and ec.freeze_merger)
    n_dec, n_vis = decoder_params(model)
    tc = model.config.text_config
    peak = peak_flops(eng.device, run.peak_flops)
    logger = MetricsLogger(out_dir, enabled=eng.is_main, total_steps=steps, tensorboard=run.tensorboard,
                           progress=run.progress, start_step=eng.global_step)
    if eng.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    W = eng.world_size
    sample_log = open_sample_log(out_dir, eng.rank, eng.global_step) if run.log_samples else None
    metrics: dict = {}
    last_ckpt = None
    try:
        while eng.global_step < steps:
            t0 = time.perf_counter()
            rows = [stream.next_rows(run.micro_batch_size) for _ in range(ec.grad_accum)]
            if sample_log is not None:
                sample_log.write(json.dumps({"step": eng.global_step + 1, "rank": eng.rank,
                                             "qa_ids": [[r["qa_id"] for r in mb] for mb in rows]}) + "\n")
                sample_log.flush()
            batches = [collate(mb, processor, ids, lt.k_latent,
                               min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
                               roi_target=lt.roi_target, no_box=lt.no_box, max_answer_tokens=cfg.data.max_answer_tokens)
                       for mb in rows]
            n_label = eng.all_reduce_sum(sum(b.n_label for b in batches))
            n_roi = eng.all_reduce_sum(sum(b.n_roi for b in batches)) if lt.roi_weight > 0 else 0.0
            # one bottleneck draw per optimizer step, a pure function of (seed, step): resume-proof
            closed = lt.bottleneck.closed(ec.seed, eng.global_step, steps)
            sums = dict(nll=0.0, roi=0.0, cos=0.0, tokens=0, seq=0, rows=0, patches=0, extra=0)
            for b in batches:
                with eng.autocast():
                    out = sft_forward(eng.model, b, ids, processor.image_processor, mode=lt.mode, grad=lt.grad,
                                      vision_grad=vision_grad, closed=closed)
                    nll = answer_nll_sum(out.token_logprobs, b.label_mask.to(eng.device))
                    roi = roi_loss_sum(out.h, out.targets, b.roi_mask, lt.roi_loss) if lt.k_latent > 0 else nll * 0
                    loss = sft_loss(nll, n_label / W, roi, n_roi / W, lt.roi_weight)
                eng.backward(loss)
                res = eng.step()
                sums["nll"] += float(nll.detach())
                sums["roi"] += float(roi.detach())
                if lt.k_latent > 0:
                    sums["cos"] += float(latent_cosine_sum(out.h.detach(), out.targets, b.roi_mask))
                sums["tokens"] += b.n_tokens
                sums["seq"] += b.prompts["input_ids"].shape[1] + b.sequences.shape[1]
                sums["rows"] += len(b.roi_boxes)
                sums["patches"] += out.patch_tokens
                if lt.k_latent > 0 and lt.mode == "self_fed" and lt.grad == "detach":
                    sums["extra"] += int(b.prompts["attention_mask"].sum()) + lt.k_latent * len(b.roi_boxes)
            if eng.device.type == "cuda":
                torch.cuda.synchronize(eng.device)
            dt = time.perf_counter() - t0
            g = {k: eng.all_reduce_sum(v) for k, v in sums.items()}
            ce = g["nll"] / max(n_label, 1)
            roi_m = g["roi"] / n_roi if n_roi else 0.0
            metrics = {"loss": ce + (lt.roi_weight * roi_m if n_roi else 0.0), "ce": ce, "roi": roi_m,
                       "latent_cos": g["cos"] / n_roi if n_roi else 0.0, "grad_norm": res.grad_norm, "lr": res.lr,
                       "tokens_per_s": g["tokens"] / dt, "samples_per_s": g["rows"] / dt, "step_s": dt,
                       "closed": float(closed), "label_tokens": n_label, "roi_rows": n_roi, "epoch": stream.position.epoch}
            if peak:
                flops = train_flops(n_dec, n_vis, tc.num_hidden_layers, tc.hidden_size, int(g["tokens"]),
                                    int(g["seq"] / max(1, len(batches) * W)), int(g["patches"]), int(g["extra"]))
                metrics["mfu"] = flops / dt / (peak * W)
            step = eng.global_step
            if step % run.log_every == 0 or step == steps:
                logger.log(step, metrics)
                if eng.is_main and on_log is not None:
                    on_log(step, metrics)
            if (run.save_every and step % run.save_every == 0) or step == steps:
                last_ckpt = save(eng, out_dir, step, stream, processor, cfg, metrics)
            if on_step is not None:
                on_step(step, metrics)
    finally:
        logger.close()
        if sample_log is not None:
            sample_log.close()
    return {"metrics": metrics, "checkpoint": str(last_ckpt) if last_ckpt else None, "steps": eng.global_step,
            "out_dir": str(out_dir)}


def save(eng: Engine, out_dir: Path, step: int, stream: ShardStream, processor, cfg: SFTConfig, metrics) -> Path:
    path = eng.save(checkpoint_dir(out_dir, step), {"data_position": stream.position.to_dict(), "metrics": metrics},
                    processor=processor, config=cfg.to_dict(), k_latent=cfg.latent.k_latent)
    if eng.is_main:
        prune_checkpoints(out_dir, cfg.run.keep_last, upto=step)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="medlvr train-sft", description="ROI-SFT (Stage 1) on corpus shards")
    add_config_arguments(p, "configs/sft_tiny.yaml, configs/sft_qwen25vl_7b.yaml", "engine.lr=1e-5")
    return exit_on_config_error("medlvr train-sft", run_from_args, p.parse_args(argv))


def run_from_args(args) -> int:
    """`--config` + `--set` -> train, with Pipes reporting when launched by Dagster. A `ConfigError` is raised as
    is (the root CLI prints it as one line and exits 2)."""
    cfg = load_sft_config(args.config, args.overrides)
    refuse_silent_overwrite(cfg.run.out_dir, cfg.run.resume, cfg.run.replace)  # before anything is written there
    quiet_loading_bars()
    with open_pipes() as pipes:
        try:
            return _run(cfg, pipes)
        except Exception as exc:
            report_failure(pipes, exc, cfg.run.out_dir)
            raise


def _run(cfg: SFTConfig, pipes) -> int:
    on_log = None
    if pipes is not None:
        def on_log(step, m):
            pipes.log.info(format_step(step, m))
    result = train(cfg, on_log=on_log)
    if pipes is not None:
        meta = scalar_metrics(result["metrics"])
        meta.update(checkpoint=result["checkpoint"], steps=result["steps"],
                    metrics_jsonl=str(Path(result["out_dir"]) / "metrics.jsonl"))
        pipes.report_asset_materialization(metadata=meta)
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary_line(result))
    return 0


def summary_line(result: dict) -> str:
    """The console's last line: what was trained and where the checkpoint is (every metric is in metrics.jsonl)."""
    m = result["metrics"]
    losses = f": loss {m['loss']:.4g} (answer {m['ce']:.4g}, ROI {m['roi']:.4g})" if "loss" in m else ""
    return (f"ROI-SFT: {result['steps']} steps{losses}; metrics: {Path(result['out_dir']) / 'metrics.jsonl'}; "
            f"checkpoint: {result['checkpoint'] or 'none'}")


if __name__ == "__main__":
    raise SystemExit(main())

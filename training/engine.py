"""Training engine shared by the Stage-1 (ROI-SFT) and Stage-2 (VLPO) recipes.

A thin wrapper around ONE of two back ends, chosen by `EngineConfig.backend`:

* ``single``: one process, CPU or one GPU; plain torch AdamW, LambdaLR, manual accumulation and clipping;
  ``precision="bf16"`` runs the forward under `torch.autocast` (fp32 master weights).
* ``deepspeed``: ZeRO-2 (stage configurable) through `deepspeed.initialize`; the DeepSpeed config is GENERATED
  from the engine config (`deepspeed_config`), never hand-written. Launch every rank with
  ``deepspeed [--hostfile H] --module medlvr.training.sft.recipe --config C`` or
  ``torchrun --nnodes N --nproc_per_node G [--rdzv-endpoint host:port] -m medlvr.training.sft.recipe --config C``.
  A hostfile (`deepspeed --hostfile`) lists one node per line, ``worker-1 slots=8``; every node needs the same
  checkout, environment and data paths. ``precision="bf16"`` lets DeepSpeed keep bf16 weights with fp32 master
  copies in the (partitioned) optimizer. On CPU the communication backend is gloo.

API (what a recipe calls; everything else is private)::

    eng = Engine(model, cfg, total_steps=S, micro_batch_size=B)   # freezes, moves, wraps, builds optim/sched
    eng.model                      # the unwrapped HF model (forward through it or its submodules)
    eng.device, eng.rank, eng.world_size, eng.is_main
    with eng.autocast(): loss = ...   # bf16 autocast on the single back end, no-op otherwise
    n = eng.all_reduce_sum(x)      # float sum over ranks (global loss normalisers)
    d = eng.all_reduce_sums({k: x})  # the same for several values, one collective
    eng.backward(loss)             # loss = this micro-batch's share of the GLOBAL-batch loss (see below)
    res = eng.step()               # call after EVERY micro-batch; res.stepped at accumulation boundaries,
                                   # then res.grad_norm (pre-clip), res.lr; clipping and scheduler included
    eng.save(dir, extra_state, processor=..., config=...)   # all ranks call it; atomic; exact-resume state
    extra = eng.resume(dir)        # all ranks; returns the extra_state given to save
    eng.global_step, eng.micro_step

Loss scaling contract: the engine never divides by the accumulation count. A recipe computes
``loss = sum_over_micro_batch / (global_count / world_size)`` where ``global_count`` is the normaliser summed
over all micro-batches of the optimizer step and all ranks (`all_reduce_sum`); gradient averaging over ranks
then yields the exact global mean, so micro-batch 1 x accumulation 4 equals micro-batch 4 x accumulation 1.

Freeze rules: `freeze_vision_tower` (patch embedding + blocks) and `freeze_merger` set `requires_grad=False`;
frozen parameters are not given to the optimizer. Weight decay applies to >= 2-D parameters only.
With `lora.r > 0` (`medlvr.training.lora`) everything is frozen except the LoRA adapters on the language model
and the control-token rows (`token_ids`) of the embedding and lm_head; a checkpoint then also holds
`dir/adapter/` (peft `save_pretrained`), `dir/model/` is the MERGED model, and resume reloads the adapter.

Checkpoint layout (`save`)::

    dir/model/               safetensors weights + config + processor/tokenizer (`medlvr.training.model.save_checkpoint`)
    dir/optim/               single: optimizer.pt, scheduler.pt | deepspeed: the engine's own (per-rank ZeRO shards)
    dir/rng/rank-<r>.pt      python, numpy, torch (and CUDA) RNG states per rank
    dir/trainer_state.json   counters + extra_state (data position, ...);  dir/config.json: the run's config
    dir/manifest.json        every other file with size and sha256, written last (`training/checkpoints.py`)
The directory is written as ``dir.tmp`` and renamed when complete, so a killed save never looks complete; resume
verifies the manifest and falls back to an older checkpoint when it does not (`resolve_resume`).
Under ZeRO-1/2 a checkpoint resumes on any world size (`_load_zero_resharded`); the single back end needs the
world size that wrote it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medlvr.training.checkpoints import write_manifest
from medlvr.training.lora import LoraConfig, apply_lora, load_adapter_weights, merged_model
from medlvr.training.model import save_checkpoint
from medlvr.training.portable_generate import write_custom_generate

BACKENDS = ("single", "deepspeed")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "single"  # single | deepspeed
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (GPU)
    lr: float = 1e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    schedule: str = "cosine"  # cosine (linear warmup, cosine decay to min_lr_ratio * lr) | constant (+ warmup)
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0  # <= 0: no clipping
    grad_accum: int = 1
    gradient_checkpointing: bool = False  # non-reentrant; HF drops the KV cache under it (see training.sft)
    freeze_vision_tower: bool = True
    freeze_merger: bool = True
    zero_stage: int = 2
    offload_optimizer: bool = False  # ZeRO optimizer offload to CPU (DeepSpeedCPUAdam, JIT-built)
    dist_backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    seed: int = 0
    lora: LoraConfig = field(default_factory=LoraConfig)  # r > 0: LoRA adapters + control-token rows only

    def __post_init__(self):
        if self.backend not in BACKENDS or self.precision not in PRECISIONS or self.schedule not in SCHEDULES:
            raise ValueError(f"backend in {BACKENDS}, precision in {PRECISIONS}, schedule in {SCHEDULES}: {self}")
        if self.grad_accum < 1 or self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"need grad_accum >= 1, lr > 0, 0 <= warmup_ratio < 1: {self}")


@dataclass
class StepResult:
    stepped: bool  # an optimizer step happened (accumulation boundary)
    grad_norm: float | None  # global grad norm before clipping (None between boundaries)
    lr: float  # learning rate used by this step
    step: int  # optimizer steps done so far


def lr_lambda(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine",
              min_lr_ratio: float = 0.0) -> float:
    """LR multiplier for optimizer step `step` (0-based): linear warmup (step+1)/warmup, then cosine to min_lr_ratio.

    >>> lr_lambda(0, 2, 10), lr_lambda(1, 2, 10), lr_lambda(2, 2, 10), lr_lambda(10, 2, 10)
    (0.5, 1.0, 1.0, 0.0)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def apply_freeze(model, freeze_vision_tower: bool, freeze_merger: bool) -> dict[str, int]:
    """Set requires_grad by the freeze rules; returns parameter counts {trainable, frozen}."""
    visual = model.model.visual
    for name, p in visual.named_parameters():
        is_merger = name.startswith("merger.")
        p.requires_grad_(not (freeze_merger if is_merger else freeze_vision_tower))
    return parameter_counts(model)


def parameter_counts(model) -> dict[str, int]:
    """Parameter counts {trainable, frozen} as the requires_grad flags stand."""
    counts = {"trainable": 0, "frozen": 0}
    for p in model.parameters():
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


def param_groups(model, weight_decay: float) -> list[dict]:
    """Trainable parameters, decayed (>= 2-D: matrices, embeddings) and not (biases, norms)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def deepspeed_config(cfg: EngineConfig, micro_batch_size: int, world_size: int) -> dict:
    """The DeepSpeed JSON config generated from the engine config (optimizer and scheduler are client objects)."""
    ds = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.max_grad_norm if cfg.max_grad_norm > 0 else 0.0,
        "zero_optimization": {"stage": cfg.zero_stage, "overlap_comm": False, "contiguous_gradients": True,
                              "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch AdamW: no fused_adam / cpu_adam JIT build
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.adam_eps,
                                                       "weight_decay": cfg.weight_decay}}
    return ds


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Engine:
    """See the module docstring for the API and contracts."""

    def __init__(self, model, cfg: EngineConfig, total_steps: int, micro_batch_size: int = 1,
                 token_ids: Sequence[int] = ()):
        self.cfg = cfg
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.device = resolve_device(cfg.device)
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        if cfg.backend == "single" and self.world_size > 1:
            raise ValueError("WORLD_SIZE > 1 needs backend: deepspeed (the single back end has no data parallelism)")
        self.global_step = 0
        self.micro_step = 0
        self.param_counts = apply_freeze(model, cfg.freeze_vision_tower, cfg.freeze_merger)
        self.peft = None
        if cfg.lora.enabled:  # adapters injected into `model` in place; the PeftModel saves and merges
            self.peft = apply_lora(model, cfg.lora, token_ids)
            self.param_counts = parameter_counts(model)
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:  # the accelerator DeepSpeed picks without a GPU, named so it does not log a warning when it is
            # imported: transformers' save_pretrained imports it at the first checkpoint, mid progress display
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        model.to(self.device)
        self.model = model
        self._ds = None
        groups = param_groups(model, cfg.weight_decay)
        if cfg.backend == "deepspeed":
            self._init_deepspeed(groups, micro_batch_size)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)
            self.scheduler = self._scheduler(self.optimizer)
        self.trainable = [p for g in groups for p in g["params"]]

    # ---------------------------------------------------------------------------------------------- setup
    def _scheduler(self, optimizer):
        cfg, w, t = self.cfg, self.warmup_steps, self.total_steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, w, t, cfg.schedule, cfg.min_lr_ratio))

    def _init_deepspeed(self, groups, micro_batch_size: int) -> None:
        import deepspeed

        backend = self.cfg.dist_backend
        if backend == "auto":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        if not torch.distributed.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            deepspeed.init_distributed(dist_backend=backend)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        ds_cfg = deepspeed_config(self.cfg, micro_batch_size, self.world_size)
        optimizer = None
        if not self.cfg.offload_optimizer:
            optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, eps=self.cfg.adam_eps)
        self._ds, self.optimizer, _, _ = deepspeed.initialize(
            model=self.model, model_parameters=groups, optimizer=optimizer, config=ds_cfg,
            lr_scheduler=lambda opt: self._scheduler(opt))
        self.scheduler = self._ds.lr_scheduler
        self.ds_config = ds_cfg

    # ------------------------------------------------------------------------------------------ properties
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def at_boundary(self) -> bool:
        """The NEXT `step()` call ends an accumulation window (an optimizer step happens)."""
        return (self.micro_step + 1) % self.cfg.grad_accum == 0

    def autocast(self):
        if self.cfg.precision == "bf16" and self._ds is None:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def all_reduce_sum(self, x: float) -> float:
        if self.world_size == 1:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return float(t.item())

    def all_reduce_sums(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over ranks, in one collective."""
        if self.world_size == 1:
            return {k: float(v) for k, v in values.items()}
        t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return dict(zip(values, t.tolist()))

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------------------------------ training
    def backward(self, loss: torch.Tensor) -> None:
        if self._ds is not None:
            self._ds.backward(loss, scale_wrt_gas=False)
        else:
            loss.backward()

    def step(self) -> StepResult:
        lr = self.current_lr()
        boundary = self.at_boundary
        self.micro_step += 1
        if self._ds is not None:
            self._ds.step()  # DeepSpeed counts micro-steps itself: steps, clips and schedules at its boundary
            if not boundary:
                return StepResult(False, None, lr, self.global_step)
            self.global_step += 1
            norm = self._ds.get_global_grad_norm()
            return StepResult(True, None if norm is None else float(norm), lr, self.global_step)
        if not boundary:
            return StepResult(False, None, lr, self.global_step)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return StepResult(True, float(norm), lr, self.global_step)

    # ------------------------------------------------------------------------------------ checkpointing
    def save(self, directory: str | Path, extra_state: dict[str, Any] | None = None, *, processor=None,
             config: dict | None = None, k_latent: int | None = None,
             write_extra: Callable[[Path], None] | None = None) -> Path:
        """Write a complete, resumable checkpoint (all ranks must call it). Returns the final directory.

        `k_latent`: K recorded next to the weights (`model/medlvr_latent.json`, needs `processor`).
        `write_extra(tmp_dir)`: every rank adds its own files (per-rank state of a recipe) before the manifest.
        The manifest (`medlvr.training.checkpoints.write_manifest`) is written last, then the folder renamed."""
        final = Path(directory)
        tmp = final.with_name(final.name + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        if self.is_main:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
            unwrapped = self.model if self.peft is None else merged_model(self.peft)
            if self.peft is not None:
                self.peft.save_pretrained(str(tmp / "adapter"))
            if processor is not None:
                save_checkpoint(unwrapped, processor, tmp / "model", k_latent=k_latent)
            else:
                unwrapped.save_pretrained(str(tmp / "model"), safe_serialization=True)
                write_custom_generate(tmp / "model")
        (tmp / "optim").mkdir(exist_ok=True)
        (tmp / "rng").mkdir(exist_ok=True)
        if self._ds is not None:
            self._ds.save_checkpoint(str(tmp / "optim"), tag="ds", save_latest=False)
        elif self.is_main:
            torch.save(self.optimizer.state_dict(), tmp / "optim" / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "optim" / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng" / f"rank-{self.rank}.pt")
        if write_extra is not None:
            write_extra(tmp)
        self.barrier()
        if self.is_main:
            state = {"global_step": self.global_step, "micro_step": self.micro_step, "world_size": self.world_size,
                     "engine_config": asdict(self.cfg), "extra_state": extra_state or {}}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1, default=str))
            if config is not None:
                (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
            write_manifest(tmp)  # last: a folder with a manifest that verifies is complete
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        self.barrier()
        return final

    def resume(self, directory: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, scheduler, counters and this rank's RNG; returns the saved extra_state."""
        directory = Path(directory)
        state = json.loads((directory / "trainer_state.json").read_text())
        if state["world_size"] != self.world_size and self._ds is None:
            raise ValueError(f"checkpoint from world size {state['world_size']}, running {self.world_size}")
        if self._ds is not None and state["world_size"] != self.world_size:
            self._load_zero_resharded(directory / "optim" / "ds", state["world_size"])
        elif self._ds is not None:
            self._ds.load_checkpoint(str(directory / "optim"), tag="ds", load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
        else:
            if self.peft is not None:  # the frozen base is the starting model; only adapter weights trained
                load_adapter_weights(self.peft, directory / "adapter")
            else:
                load_weights(self.model, directory / "model")
            self.optimizer.load_state_dict(torch.load(directory / "optim" / "optimizer.pt", weights_only=False))
            self.scheduler.load_state_dict(torch.load(directory / "optim" / "scheduler.pt", weights_only=False))
        rng_file = directory / "rng" / f"rank-{self.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        self.global_step, self.micro_step = state["global_step"], state["micro_step"]
        return state["extra_state"]


    def _load_zero_resharded(self, ds_dir: Path, saved_world: int) -> None:
        """Resume a ZeRO-1/2 checkpoint written by `saved_world` ranks on this world size.

        DeepSpeed's `load_checkpoint` refuses a different data-parallel size; its ZeRO-1/2 optimizer can still
        merge the partitions of every saved rank and cut this rank's partition (the "elastic" restore), which is
        what this does: module weights, scheduler and counters from the (world-size independent) model-states
        file, the fp32 master weights and the AdamW moments of all saved ranks merged and re-partitioned.
        Every rank reads every saved shard (memory-mapped)."""
        from deepspeed.checkpoint.constants import (BASE_OPTIMIZER_STATE, BASE_OPTIMIZER_STATE_STEP,
                                                    OPTIMIZER_STATE_DICT)

        if self.cfg.zero_stage not in (1, 2):
            raise ValueError(f"a checkpoint from world size {saved_world} resumes on {self.world_size} ranks only "
                             f"under ZeRO stage 1 or 2 (engine.zero_stage is {self.cfg.zero_stage})")
        states = torch.load(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False,
                            mmap=True)
        self._ds.load_module_state_dict(checkpoint=states, strict=True)
        self.scheduler.load_state_dict(states["lr_scheduler"])
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # the scheduler's state alone sets the rate only at its next step
        self._ds.global_steps, self._ds.global_samples = states["global_steps"], states["global_samples"]
        self._ds.skipped_steps = states["skipped_steps"]
        shards = []
        for r in range(saved_world):
            found = sorted(ds_dir.glob(f"*zero_pp_rank_{r}_mp_rank_00_optim_states.pt"))
            if len(found) != 1:
                raise FileNotFoundError(f"{ds_dir}: no ZeRO shard of rank {r} (the checkpoint has {saved_world})")
            sd = torch.load(found[0], map_location="cpu", weights_only=False, mmap=True)[OPTIMIZER_STATE_DICT]
            base = sd[BASE_OPTIMIZER_STATE]
            if isinstance(base, dict):  # the default ("rigid") layout: a torch optimizer state_dict per rank
                groups = [base["state"][i] for i in range(len(base["param_groups"]))]
                sd = {**sd, BASE_OPTIMIZER_STATE: groups, BASE_OPTIMIZER_STATE_STEP: groups[0]["step"]}
            shards.append(sd)
        opt = self._ds.optimizer
        opt._load_global_state(shards[0])
        opt._restore_elastic_base_optimizer_state(shards)
        opt._restore_from_elastic_fp32_weights(shards)
        opt._link_all_hp_params()


@torch.no_grad()
def load_weights(model, model_dir: str | Path) -> None:
    """Copy the weights saved by `save_pretrained` in `model_dir` into `model` in place (strict).

    Goes through `from_pretrained` because transformers renames Qwen2.5-VL keys on save (`model.language_model.*`
    is written as `model.*`); a raw safetensors load would not match `model.state_dict()`.
    """
    src = type(model).from_pretrained(str(model_dir), dtype=next(model.parameters()).dtype, local_files_only=True)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {model_dir} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    del src

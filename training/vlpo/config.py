"""VLPO run configuration: frozen dataclasses, loaded from YAML (`configs/vlpo_*.yaml`) with dotted overrides.

    cfg = load_config("configs/vlpo_tiny.yaml", overrides=["algo.beta=0.0", "train.steps=2"])

Sections: model, data, rollout, algo, engine (the shared `medlvr.training.engine.EngineConfig`), train. Unknown keys are errors (a typo must not silently fall
back to a default). Variants (method.md §5) are chosen by `algo.variant`:

| variant       | latent segment (rollout.k_latent) | loss                                      |
| ------------- | --------------------------------- | ----------------------------------------- |
| `grpo`        | forced to 0 (plain decoding)      | text PPO-clip + beta * KL                 |
| `medlvr_grpo` | K > 0                             | text only (lambda_lat forced to 0)        |
| `vlpo`        | K > 0                             | text + lambda_lat * latent + beta * KL    |

"MedLVR w/o ROI-SFT" is `medlvr_grpo` started from a checkpoint trained without the ROI loss (a stage-1 choice).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medlvr.training.engine import EngineConfig
from medlvr.training.vlpo.algos import RL_VARIANTS
from medlvr.training.vlpo.data import sample_sources

VARIANTS = tuple(RL_VARIANTS)  # the variant table lives in algos.py


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # ROI-SFT checkpoint directory (local); None with tiny=True
    tiny: bool = False  # build the offline tiny Qwen2.5-VL instead (tests, demo, benchmarks)
    tiny_seed: int = 0
    ref_path: str | None = None  # reference model; None = the starting checkpoint (`path`, or the tiny model)
    ref_offload: bool = False  # keep the reference on CPU between its forwards
    attn_implementation: str = "sdpa"
    min_pixels: int | None = None  # processor pixel budget (None: processor default); paper default 256*28*28
    max_pixels: int | None = None  # paper default 1280*28*28


@dataclass(frozen=True)
class DataConfig:
    source: str = "omnimedvqa"  # a registered sample source (vlpo.data.sample_sources(): benchmarks, synthetic, ...)
    root: str | None = None  # the source's directory (OmniMedVQA: QA_information/, Images/)
    splits_dir: str | None = None  # Med-R1 Splits/modality (optional; overrides the seeded split)
    split: str = "train"
    split_seed: int = 0
    test_fraction: float = 0.2
    modalities: tuple[str, ...] | None = None
    limit: int | None = None
    synthetic_size: int = 16  # source=synthetic: number of prompts
    synthetic_templates: tuple[int, ...] | None = None  # subset of data.SYNTHETIC_TEMPLATES (None: all)
    instruction: str = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class RolloutConfig:
    num_generations: int = 8  # G
    temperature: float = 0.9
    top_p: float = 1.0
    max_new_tokens: int = 512  # counts control tokens and latent slots
    k_latent: int = 8
    force_start: bool = True
    noise: str = "relative"  # none | absolute | relative (method.md §4.1 Beyond; none = the paper)
    noise_scale: float = 0.05


@dataclass(frozen=True)
class AlgoConfig:
    variant: str = "vlpo"
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    beta: float = 0.04
    lambda_lat: float = 1.0
    latent_sigma: float = 0.1  # with latent_sigma_relative: sigma_k = 0.1 * ||mu_old,k||
    latent_sigma_relative: bool = True
    aggregation: str = "token_mean"
    adv_eps: float = 1e-6
    scale_rewards: bool = True  # False: Dr.GRPO advantages
    format_weight: float = 1.0
    updates_per_rollout: int = 1  # mu: optimizer steps on each rollout batch (> 1: ratios leave 1, clipping acts)


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/vlpo"
    steps: int = 100
    prompts_per_step: int = 4  # B prompts -> B * G trajectories per step
    micro_batch: int = 8  # trajectories per replay forward/backward (gradient accumulation inside a step)
    seed: int = 0
    save_every: int = 50  # also saved at the end; 0: only at the end
    keep_checkpoints: int = 2  # newest kept in output_dir/checkpoints (0: keep all)
    resume: bool = True  # continue from the newest checkpoint in output_dir/checkpoints
    stop_after: int | None = None  # leave after this many optimizer steps in THIS invocation (preemption tests)
    threads: int | None = None  # torch intra-op threads (CPU)
    tensorboard: bool = True
    progress: bool = True


@dataclass(frozen=True)
class VLPORunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    # optimizer, schedule, precision, back end (single | deepspeed ZeRO-2), freezing: the shared engine's config.
    # engine.grad_accum is derived (micro-batches per step) and must not be set.
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(lr=1e-6, weight_decay=0.1, warmup_ratio=0.03))
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.algo.variant not in VARIANTS:
            raise ValueError(f"algo.variant must be one of {VARIANTS}, got {self.algo.variant!r}")
        if RL_VARIANTS[self.algo.variant].latent and self.rollout.k_latent < 1:
            raise ValueError(f"variant {self.algo.variant!r} needs rollout.k_latent >= 1")
        if self.rollout.num_generations < 2:
            raise ValueError("rollout.num_generations must be >= 2 (group-normalised advantages)")
        if self.data.source not in sample_sources():
            raise ValueError(f"data.source must be a registered sample source {sorted(sample_sources())}, "
                             f"got {self.data.source!r}")
        if not (self.engine.freeze_vision_tower and self.engine.freeze_merger):
            raise ValueError("stage 2 keeps the vision tower and merger frozen (method.md §4.7)")
        if self.engine.grad_accum != 1:
            raise ValueError("engine.grad_accum is derived from train.micro_batch; leave it at 1")
        if self.model.path is None and not self.model.tiny:
            raise ValueError("model.path (the ROI-SFT checkpoint) is required unless model.tiny is true")

    # effective settings of the variant
    @property
    def k_latent(self) -> int:
        return self.rollout.k_latent if RL_VARIANTS[self.algo.variant].latent else 0

    @property
    def lambda_lat(self) -> float:
        return self.algo.lambda_lat if RL_VARIANTS[self.algo.variant].latent_loss else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(base, data: dict[str, Any], where: str):
    """`base` (a dataclass instance) with the keys of `data` replaced, nested sections recursively."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(names)})")
    kwargs = {}
    for name, value in data.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current):
            kwargs[name] = _build(current, value or {}, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return dataclasses.replace(base, **kwargs)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> VLPORunConfig:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} must look like section.key=value")
        key, raw = ov.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    base = VLPORunConfig.__new__(VLPORunConfig)  # defaults without validation; validated once at the end
    for f in dataclasses.fields(VLPORunConfig):
        object.__setattr__(base, f.name, f.default_factory())
    return _build(base, data, "config")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> VLPORunConfig:
    """YAML file -> VLPORunConfig (relative paths inside stay relative to the working directory)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    cfg = config_from_dict(data, overrides)
    return cfg

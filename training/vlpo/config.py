"""VLPO run configuration: frozen dataclasses, loaded from YAML (`configs/vlpo_*.yaml`) plus dotted overrides by the
project's one loader (`medlvr.corpus.config.load_config`: unknown keys are errors, `Path` fields resolve against
the working directory).

    cfg = load_config(VLPORunConfig, "configs/vlpo_tiny.yaml", ["algo.beta=0.0", "run.max_steps=2"])

Sections: model, data, rollout, algo, engine (the shared `medlvr.training.engine.EngineConfig` with stage-2
defaults), run. `model` and `run` are spelled as in the ROI-SFT config (`model.path: tiny` + `model.tiny_seed`;
`run.out_dir`, `run.max_steps`, `run.micro_batch_size`, `run.keep_last`, `run.resume`); the seed is `engine.seed`.
K is `rollout.k_latent`; left unset it is read from the starting checkpoint (`resolve_k_latent`).
Variants (docs/method.md §5) are chosen by `algo.variant`:

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
from typing import Any, ClassVar

from medlvr.corpus.config import ConfigError, config_to_dict
from medlvr.corpus.prompts import MC_INSTRUCTION
from medlvr.training.bottleneck import BottleneckConfig, check_attn_implementation
from medlvr.training.checkpoints import TINY, read_latent_info, resolve_model_path
from medlvr.training.engine import EngineConfig
from medlvr.training.vlpo.algos import ADV_ESTIMATORS, AGGREGATIONS, POLICY_LOSSES, RL_VARIANTS, LossConfig
from medlvr.training.vlpo.data import sample_sources

VARIANTS = tuple(RL_VARIANTS)  # the variant table lives in algos.py


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""  # required: the ROI-SFT checkpoint directory (local), or "tiny" (offline tiny model)
    tiny_seed: int = 0  # seed of the tiny model (path: tiny)
    dtype: str = "float32"  # float32 | bfloat16 (weights as loaded)
    attn_implementation: str = "sdpa"
    ref_path: str | None = None  # reference model; None = the starting model (`path`, also when it is tiny)
    ref_offload: bool = False  # keep the reference on CPU between its forwards

    def __post_init__(self):
        if not self.path:
            raise ValueError("model.path is required: the ROI-SFT checkpoint directory, or `tiny`")
        object.__setattr__(self, "path", resolve_model_path(self.path))
        if self.ref_path is not None:
            object.__setattr__(self, "ref_path", resolve_model_path(self.ref_path))


@dataclass(frozen=True)
class DataConfig:
    source: str = "omnimedvqa"  # a registered sample source (vlpo.data.sample_sources(): benchmarks, synthetic, ...)
    root: Path | None = None  # the source's directory (OmniMedVQA: QA_information/, Images/)
    splits_dir: Path | None = None  # Med-R1 Splits/modality (optional; overrides the seeded split)
    split: str = "train"
    split_seed: int = 0
    test_fraction: float = 0.2
    modalities: tuple[str, ...] | None = None
    limit: int | None = None
    synthetic_size: int = 16  # source=synthetic: number of prompts
    synthetic_templates: tuple[int, ...] | None = None  # subset of data.SYNTHETIC_TEMPLATES (None: all)
    instruction: str = MC_INSTRUCTION
    min_pixels: int | None = None  # processor pixel budget (None: the processor's); paper default 256*28*28
    max_pixels: int | None = None  # paper default 1280*28*28


@dataclass(frozen=True)
class RolloutConfig:
    num_generations: int = 8  # G
    temperature: float = 0.9
    top_p: float = 1.0
    max_new_tokens: int = 512  # counts control tokens and latent slots
    k_latent: int | None = None  # K; None: the starting checkpoint's (model/medlvr_latent.json)
    force_start: bool = True
    noise: str = "relative"  # none | absolute | relative (docs/method.md §4.1 Beyond; none = the paper)
    noise_scale: float = 0.05
    # visual bottleneck per rollout batch (p, or p -> p_end over training; training/bottleneck.py): <Medlvr_End>
    # and the answer may not attend to the visual tokens, in the rollout and in its replay alike. 0: off (paper)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)


@dataclass(frozen=True)
class AlgoConfig(LossConfig):
    """The `algo:` section. Its loss settings ARE `algos.LossConfig` (inherited: clip_eps, clip_eps_high, beta,
    lambda_lat, latent_sigma, latent_sigma_relative, aggregation, policy_loss), with the stage-2 defaults below;
    plus the variant and the advantage / reward / update settings."""

    latent_sigma: float = 0.1  # with latent_sigma_relative: sigma_k = 0.1 * ||mu_old,k||
    latent_sigma_relative: bool = True
    # keys of earlier releases: the loader names the new key in one line (medlvr.corpus.config)
    RENAMED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {
        "scale_rewards": ("adv_estimator", "scale_rewards: true is adv_estimator: grpo, false is dr_grpo")}

    variant: str = "vlpo"  # a row of algos.RL_VARIANTS
    adv_estimator: str = "grpo"  # an algos.ADV_ESTIMATORS name: grpo (std-scaled) | dr_grpo (no std scaling)
    adv_eps: float = 1e-6
    format_weight: float = 1.0
    updates_per_rollout: int = 1  # mu: optimizer steps on each rollout batch (> 1: ratios leave 1, clipping acts)


@dataclass(frozen=True)
class VLPOEngineConfig(EngineConfig):
    """The shared engine config with the stage-2 defaults (a partial `engine:` section keeps them)."""

    lr: float = 1e-6
    weight_decay: float = 0.1
    warmup_ratio: float = 0.03


@dataclass(frozen=True)
class RunConfig:
    out_dir: Path = Path("runs/vlpo")
    max_steps: int = 100  # training steps (rollout batches)
    prompts_per_step: int = 4  # B prompts -> B * G trajectories per step
    micro_batch_size: int = 8  # trajectories per replay forward/backward (gradient accumulation inside a step)
    save_every: int = 50  # also saved at the end; 0: only at the end
    keep_last: int = 2  # newest checkpoints kept in out_dir/checkpoints (0: keep all)
    resume: str = "auto"  # "" (start fresh) | auto (newest in out_dir/checkpoints, if any) | a checkpoint directory
    replace: bool = False  # a fresh run may write over a run already in out_dir (else refused)
    stop_after: int | None = None  # leave after this many optimizer steps in THIS invocation (preemption tests)
    threads: int = 0  # torch intra-op threads on CPU; 0: leave as is
    tensorboard: bool = True
    progress: bool = True
    log_samples: bool = False  # each rank writes its prompts' sample ids and rewards per step to out_dir/samples/


@dataclass(frozen=True)
class VLPORunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    # optimizer, schedule, precision, back end (single | deepspeed ZeRO-2), freezing, seed: the shared engine's
    # config. engine.grad_accum is derived (micro-batches per step) and must not be set.
    engine: VLPOEngineConfig = field(default_factory=VLPOEngineConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.algo.variant not in VARIANTS:
            raise ValueError(f"algo.variant must be one of {VARIANTS}, got {self.algo.variant!r}")
        if self.algo.adv_estimator not in ADV_ESTIMATORS:
            raise ValueError(f"algo.adv_estimator must be a registered advantage estimator "
                             f"{sorted(ADV_ESTIMATORS)}, got {self.algo.adv_estimator!r}")
        if self.algo.aggregation not in AGGREGATIONS:
            raise ValueError(f"algo.aggregation must be one of {AGGREGATIONS}, got {self.algo.aggregation!r}")
        if self.algo.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"algo.policy_loss must be a registered policy loss {sorted(POLICY_LOSSES)}, "
                             f"got {self.algo.policy_loss!r}")
        k = self.rollout.k_latent
        if RL_VARIANTS[self.algo.variant].latent and k is not None and k < 1:
            raise ValueError(f"variant {self.algo.variant!r} needs rollout.k_latent >= 1, got {k}")
        if self.rollout.bottleneck.enabled:
            if not RL_VARIANTS[self.algo.variant].latent:
                raise ValueError(f"rollout.bottleneck needs a latent variant; {self.algo.variant!r} decodes without one")
            check_attn_implementation(self.model.attn_implementation)
        if self.rollout.num_generations < 2:
            raise ValueError("rollout.num_generations must be >= 2 (group-normalised advantages)")
        if self.data.source not in sample_sources():
            raise ValueError(f"data.source must be a registered sample source {sorted(sample_sources())}, "
                             f"got {self.data.source!r}")
        if not (self.engine.freeze_vision_tower and self.engine.freeze_merger):
            raise ValueError("stage 2 keeps the vision tower and merger frozen (docs/method.md §4.7)")
        if self.engine.grad_accum != 1:
            raise ValueError("engine.grad_accum is derived from run.micro_batch_size; leave it at 1")
        if self.run.max_steps < 1 or self.run.micro_batch_size < 1:
            raise ValueError("run.max_steps and run.micro_batch_size must be >= 1")

    # effective settings of the variant
    @property
    def k_latent(self) -> int:
        if not RL_VARIANTS[self.algo.variant].latent:
            return 0
        if self.rollout.k_latent is None:
            raise ConfigError("rollout.k_latent is not resolved: call resolve_k_latent(cfg) first")
        return self.rollout.k_latent

    @property
    def lambda_lat(self) -> float:
        return self.algo.lambda_lat if RL_VARIANTS[self.algo.variant].latent_loss else 0.0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def resolve_k_latent(cfg: VLPORunConfig) -> VLPORunConfig:
    """`cfg` with `rollout.k_latent` read from the starting checkpoint when the config leaves it unset."""
    if cfg.rollout.k_latent is not None or not RL_VARIANTS[cfg.algo.variant].latent:
        return cfg
    if cfg.model.path == TINY:
        raise ConfigError("rollout.k_latent is required with model.path: tiny (no checkpoint to read K from)")
    info = read_latent_info(cfg.model.path)
    if info is None:
        raise ConfigError(f"rollout.k_latent is not set and {cfg.model.path} records no K (medlvr_latent.json): "
                          "set rollout.k_latent")
    try:
        return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, k_latent=info["k_latent"]))
    except ValueError as e:
        raise ConfigError(f"{cfg.model.path}: checkpoint K={info['k_latent']}: {e}") from None

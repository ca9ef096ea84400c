"""ROI-SFT run configuration: frozen dataclasses, filled from YAML plus dotted `--set` overrides by the project's one
loader (`medlvr.corpus.config.load_config`: unknown keys are errors, `Path` fields resolve against the working
directory).

Sections: `model`, `data`, `latent`, `engine` (`medlvr.training.engine.EngineConfig`), `run`. `model` and `run` are
spelled as in the VLPO config (`model.path: tiny` + `model.tiny_seed`; `run.out_dir`, `run.max_steps`,
`run.micro_batch_size`, `run.keep_last`, `run.resume`).
The paper's Table-4 variants are config only (docs/method.md §5):

    vanilla SFT            latent.k_latent: 0                  (no control tokens, no ROI loss)
    w/o ROI-SFT            latent.roi_target: full_image       (every target: mean of all visual tokens)
    MedLVR (ROI-SFT)       latent.roi_target: box              (default)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medlvr.corpus.config import config_to_dict, load_config
from medlvr.training.bottleneck import BottleneckConfig, check_attn_implementation
from medlvr.training.checkpoints import resolve_model_path
from medlvr.training.engine import EngineConfig

LATENT_MODES = ("self_fed", "teacher_forced")
LATENT_GRADS = ("bptt", "detach")
ROI_TARGETS = ("box", "full_image", "off")
NO_BOX = ("none", "full_image")
ROI_LOSSES = ("mse", "cosine")


@dataclass(frozen=True)
class ModelConfig:
    path: str = "tiny"  # "tiny" (offline random model, training.tiny) or a LOCAL checkpoint directory
    tiny_seed: int = 0  # seed of the tiny model (path: tiny)
    dtype: str = "float32"  # float32 | bfloat16 (weights as loaded)
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        object.__setattr__(self, "path", resolve_model_path(self.path))


@dataclass(frozen=True)
class DataConfig:
    corpus: Path | None = None  # corpus folder (with shards/) or the shards folder itself (required)
    # more corpus (or shards) folders whose `split` shards join the same stream: a training mix, e.g. the main job's
    # corpus + the synthetic grounding task (corpus/sample_data/synthetic_grounding.py); rows mix by block shuffle
    mix: tuple[Path, ...] = ()
    split: str = "train"
    min_pixels: int = 56 * 56  # processor budget; also used to render boxes in the text (render_qwen)
    max_pixels: int = 28 * 28 * 1280
    shuffle: bool = True
    seed: int = 0
    question_types: tuple[str, ...] = ()  # empty: all
    max_answer_tokens: int = 256  # the answer is truncated, the prompt never is

    def __post_init__(self):
        if self.split == "val":  # shard folders are named as the Hugging Face Hub names splits (corpus/splits.py)
            raise ValueError("split 'val' was renamed to 'validation' (the corpus' shard folders follow the Hugging "
                             "Face split names: train, validation, test): set data.split=validation")


@dataclass(frozen=True)
class LatentConfig:
    k_latent: int = 8  # K, latent slots; 0 = vanilla SFT (no control tokens); saved with every checkpoint
    mode: str = "self_fed"  # self_fed (K+2 passes / no-grad latents + one pass) | teacher_forced (targets as inputs)
    grad: str = "bptt"  # self_fed only: bptt (gradient through the latent chain) | detach
    roi_target: str = "box"  # box | full_image (the "w/o ROI-SFT" ablation) | off (no ROI loss)
    no_box: str = "none"  # rows without boxes: none (no ROI loss on them) | full_image
    roi_loss: str = "mse"  # mse (per dimension) | cosine (1 - cos)
    roi_weight: float = 0.1  # lambda in L = L_ans + lambda * L_roi
    # visual bottleneck: per batch with probability p (or p -> p_end linearly), <Medlvr_End> and the answer may
    # not attend to the visual tokens (training/bottleneck.py); p = 0 (default) is the paper's recipe
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    # text-blind prompt (issue 27): the prompt text after the image may not attend to the visual tokens (only
    # <Medlvr_Start> and the latent slots read the image), in every pass; recorded in the checkpoint so that VLPO
    # and inference use the same mask. false (default): the paper's attention
    text_blind: bool = False


@dataclass(frozen=True)
class RunConfig:
    out_dir: Path = Path("runs/sft")
    micro_batch_size: int = 1  # per rank
    max_steps: int = 0  # optimizer steps; 0: from epochs
    epochs: float = 1.0
    save_every: int = 0  # optimizer steps; 0: only at the end
    keep_last: int = 2  # newest checkpoints kept in out_dir/checkpoints (0: keep all)
    log_every: int = 1
    resume: str = ""  # "" (start fresh) | auto (newest in out_dir/checkpoints, if any) | a checkpoint directory
    replace: bool = False  # a fresh run may write over a run already in out_dir (else refused)
    tensorboard: bool = True
    progress: bool = True
    peak_flops: float = 0.0  # override the device's peak bf16 FLOP/s for MFU
    threads: int = 0  # torch intra-op threads on CPU; 0: leave as is
    log_samples: bool = False  # each rank writes the qa_ids of its rows per step to out_dir/samples/rank-R.jsonl


@dataclass(frozen=True)
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        lt = self.latent
        if lt.k_latent < 0 or lt.mode not in LATENT_MODES or lt.grad not in LATENT_GRADS or lt.roi_target not in ROI_TARGETS \
                or lt.no_box not in NO_BOX or lt.roi_loss not in ROI_LOSSES or lt.roi_weight < 0:
            raise ValueError(f"invalid latent config: {lt}")
        if lt.k_latent > 0 and lt.mode == "self_fed" and lt.grad == "bptt" and self.engine.gradient_checkpointing:
            # HF drops the KV cache inside checkpointed layers (modeling_layers.py), which breaks the K+2 passes
            raise ValueError("latent.grad=bptt needs the KV cache with gradients: use engine.gradient_checkpointing="
                             "false, or latent.grad=detach (identical forward, GC-compatible)")
        if lt.text_blind:
            check_attn_implementation(self.model.attn_implementation)
        if lt.bottleneck.enabled:
            if lt.k_latent == 0:
                raise ValueError("latent.bottleneck needs a latent segment: set latent.k_latent > 0 or bottleneck.p=0")
            check_attn_implementation(self.model.attn_implementation)
        if not self.data.corpus:
            raise ValueError("data.corpus is required (a folder written by `medlvr build-corpus`)")
        if self.run.micro_batch_size < 1:
            raise ValueError("run.micro_batch_size must be >= 1")

    def to_dict(self) -> dict:
        return config_to_dict(self)


def load_sft_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SFTConfig:
    """YAML file (optional) + dotted overrides like `engine.lr=1e-5` -> SFTConfig (`medlvr.corpus.config`)."""
    return load_config(SFTConfig, path, overrides)


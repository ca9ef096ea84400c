"""LoRA (the `peft` library) for ROI-SFT and VLPO on one GPU: `engine.lora: {r, alpha, dropout, target_modules}`.

* Adapters go on the LANGUAGE MODEL's linear layers named in `target_modules` only (the vision tower's MLP uses
  the same names, `gate_proj` / `up_proj` / `down_proj`, and stays frozen), through a regex on the module path.
* The three control tokens are new: their input-embedding and lm_head rows must learn. They are trained with
  peft's `trainable_token_indices` (a delta on just those rows) rather than `modules_to_save` (a full trainable
  copy of both V x D matrices: 2 x 545 M parameters plus their AdamW state at 7B, more than the whole LoRA
  budget), so only adapter parameters and those rows ever change.
* The HF model is modified in place: recipes keep calling `model.lm_head`, `model.model.language_model`, ...;
  the `PeftModel` wrapper is only used to save (`save_pretrained`: adapter weights and config) and to merge
  (`merge_and_unload` on a copy: a plain Qwen2.5-VL checkpoint that evaluation and VLPO load as any other).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import peft
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

LANGUAGE_LAYERS = r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\."
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraConfig:
    r: int = 0  # rank; 0 = LoRA off (full fine-tuning of the unfrozen parameters)
    alpha: float = 16.0  # scaling alpha / r
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self):
        if self.r < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1 or (self.r > 0 and not self.target_modules):
            raise ValueError(f"lora needs r >= 0, alpha > 0, 0 <= dropout < 1 and target_modules: {self}")

    @property
    def enabled(self) -> bool:
        return self.r > 0


def target_regex(names: Sequence[str]) -> str:
    """peft matches a string target against the full module path: language-model layers only."""
    return rf"^{LANGUAGE_LAYERS}(?:{'|'.join(re.escape(n) for n in names)})$"


def apply_lora(model, cfg: LoraConfig, token_ids: Sequence[int]) -> peft.PeftModel:
    """Wrap `model` (modified in place) with LoRA adapters and trainable control-token rows; every other
    parameter is frozen. Returns the PeftModel (`.get_base_model()` is `model`)."""
    if not token_ids:
        raise ValueError("LoRA needs the control-token ids (their embedding / lm_head rows are trained)")
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    rows = sorted(set(int(i) for i in token_ids))
    # tied (3B): peft ties the lm_head delta to the embedding's; untied (7B): both matrices get their own delta
    tokens = {"embed_tokens": rows} if tied else {"embed_tokens": rows, "lm_head": rows}
    pcfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=target_regex(cfg.target_modules), trainable_token_indices=tokens)
    return peft.get_peft_model(model, pcfg)


def merged_model(peft_model: peft.PeftModel):
    """A plain HF model with adapters and token rows merged in; the training model is left untouched (a copy:
    unmerging in bf16 would not restore the base weights exactly)."""
    return copy.deepcopy(peft_model).merge_and_unload()


def load_adapter_weights(peft_model: peft.PeftModel, adapter_dir: str | Path) -> None:
    """Load adapter (and token-row) weights written by `save_pretrained` into the live PeftModel, strictly."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {adapter_dir}: not a LoRA checkpoint")
    result = set_peft_model_state_dict(peft_model, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter {adapter_dir} does not match the model: unexpected {unexpected[:5]}")

"""The model of a run, the same way for ROI-SFT, VLPO and evaluation: `model.path: tiny` (the offline random tiny
model of `medlvr.training.tiny`, seeded by `tiny_seed`) or a LOCAL checkpoint directory (ours or a downloaded
Qwen2.5-VL). Kept apart from `medlvr.training.model` because the tiny builder itself uses that module.
"""

from __future__ import annotations

import torch

from medlvr.training.checkpoints import TINY
from medlvr.training.model import load_checkpoint, torch_dtype
from medlvr.training.tiny import build_tiny


def load_model_or_tiny(path: str, tiny_seed: int = 0, dtype: str = "float32", attn_implementation: str = "sdpa",
                       device: str | torch.device = "cpu"):
    """(model, processor, LatentTokenIds) in eval mode: the tiny model when `path == "tiny"`, else the checkpoint.

    Processor and generation config are ready for batched decoding: left padding, a pad id to generate with.
    """
    if path == TINY:
        b = build_tiny(seed=tiny_seed, attn_implementation=attn_implementation, dtype=torch_dtype(dtype),
                       device=device)
        model, processor, ids = b.model, b.processor, b.ids
    else:
        model, processor, ids = load_checkpoint(path, dtype=torch_dtype(dtype),
                                                attn_implementation=attn_implementation, device=device)
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    processor.tokenizer.padding_side = "left"
    return model, processor, ids

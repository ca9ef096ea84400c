"""Rollout seam (docs/training.md §1.1): a small `RolloutEngine` protocol and the colocated implementation on this
project's batched KV-cached latent decoding (`medlvr.training.latent_decode.latent_generate`, docs/method.md §2, §4.1).

`LocalLatentRollout` shares the policy's weights (nothing to sync): G samples per prompt share ONE prefill
(`DecodeConfig.num_samples`), latent exploration noise is drawn and recorded by the decoder.
`per_sample_prefill=True` repeats every prompt G times instead (the benchmark's baseline only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from medlvr.training.latent_decode import DecodeConfig, LatentDecodeOutput, RowGenerators, latent_generate
from medlvr.training.model import LatentTokenIds
from medlvr.training.vlm_inputs import images_per_row


class RolloutEngine(Protocol):
    def generate(self, prompts: Mapping[str, torch.Tensor], cfg: DecodeConfig,
                 generator: torch.Generator | RowGenerators | None = None) -> LatentDecodeOutput: ...


def repeat_prompts(prompts: Mapping[str, torch.Tensor], g: int, image_token_id: int) -> dict[str, torch.Tensor]:
    """A B-row processor batch -> B*G rows (row b*G + j), images repeated with their prompt."""
    out = {k: v.repeat_interleave(g, dim=0) for k, v in prompts.items()
           if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if prompts.get("pixel_values") is not None:
        n_img, _ = images_per_row(prompts["input_ids"], image_token_id)
        grids = torch.split(prompts["image_grid_thw"], n_img)
        patches = torch.split(prompts["pixel_values"], [int(g_.prod(-1).sum()) for g_ in grids])
        out["image_grid_thw"] = torch.cat([grids[b] for b in range(len(grids)) for _ in range(g)])
        out["pixel_values"] = torch.cat([patches[b] for b in range(len(patches)) for _ in range(g)])
    return out


class LocalLatentRollout:
    """Colocated rollouts with the policy model itself (eval mode, no grad)."""

    def __init__(self, model, ids: LatentTokenIds, per_sample_prefill: bool = False):
        self.model, self.ids, self.per_sample_prefill = model, ids, per_sample_prefill

    def generate(self, prompts, cfg: DecodeConfig, generator=None) -> LatentDecodeOutput:
        was_training = self.model.training
        self.model.eval()
        try:
            if self.per_sample_prefill and cfg.num_samples > 1:
                g = cfg.num_samples
                rep = repeat_prompts(prompts, g, self.model.config.image_token_id)
                out = latent_generate(self.model, rep, self.ids, _replace(cfg, num_samples=1), generator=generator)
                out.prompt_index = torch.arange(prompts["input_ids"].shape[0], device=out.prompt_index.device
                                                ).repeat_interleave(g)
                return out
            return latent_generate(self.model, prompts, self.ids, cfg, generator=generator)
        finally:
            self.model.train(was_training)


def _replace(cfg: DecodeConfig, **kw) -> DecodeConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def rollout_row_seeds(seed: int, step: int, sample_ids: Sequence[str], num_generations: int) -> list[int]:
    """Seeds of the B*G trajectory rows (row b*G + g) of training step `step` (1-based) for `RowGenerators`: a pure
    function of (run seed, step, sample id, its occurrence in `sample_ids`, g), never of the rank or the row's
    position, so a sample gets the same token and latent-noise draws on any world size. `sample_ids`: the whole
    step batch of every rank (its occurrence count keeps a sample drawn twice in one step from repeating its
    draws); a rank seeds its own rows with its slice of the result."""
    seen: dict[str, int] = {}
    out = []
    for sid in sample_ids:
        n = seen[sid] = seen.get(sid, -1) + 1
        for g in range(num_generations):
            digest = hashlib.sha256(f"{seed}/{step}/{sid}/{n}/{g}".encode()).digest()
            out.append(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
    return out

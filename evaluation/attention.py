"""Fig. 3 data: how much the decoder attends to the image, per layer, and where (heatmap over the image).

For one sample: greedy latent generation, then ONE teacher-forced forward over prompt + generated sequence with
eager attention (latent slots take the recorded latent inputs, as in `medlvr.training.replay`). The queries are the
positions that produced the generated tokens (the last prompt position and every generated position but the
last). Per layer: the share of their attention mass on the `<|image_pad|>` keys, averaged over heads and
queries. Heatmap: the attention on the first image's tokens, averaged over layers, heads and queries, reshaped to
its merged patch grid (grid_h / 2, grid_w / 2) and normalised to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from medlvr.corpus.evalsets.base import Sample, open_image
from medlvr.evaluation.inference import LoadedModel, encode_batch
from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.vlm_inputs import embed_with_images, image_embeddings, rope_positions


@dataclass
class AttentionResult:
    sample_id: str
    visual_share: np.ndarray  # (n_layers,) fraction of attention mass on visual tokens
    heatmap: np.ndarray | None  # (gh, gw) in [0, 1] over the first image, None without images
    image_size: tuple[int, int] | None  # (width, height) of the original first image
    roi: list[list[float]]  # ROI boxes [x0, y0, x1, y1] in original image pixels (may be empty)
    n_generated: int


def sample_rois(sample: Sample) -> list[list[float]]:
    """ROI boxes of a sample from its tags: "roi" / "bbox" (one box) or "rois" / "boxes" (a list)."""
    t = sample.tags
    for key in ("rois", "boxes", "roi_boxes"):
        if t.get(key):
            return [list(map(float, b[:4])) for b in t[key]]
    for key in ("roi", "bbox"):
        if t.get(key):
            return [list(map(float, t[key][:4]))]
    return []


@contextmanager
def eager_attention(model):
    """Switch the model to eager attention for the duration (only eager attention returns attention weights);
    the previous implementation is restored on exit, also after an exception."""
    prev = model.config._attn_implementation
    if prev != "eager":
        model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if prev != "eager":
            model.set_attn_implementation(prev)


@torch.no_grad()
def rollout_attentions(model, enc: dict, out) -> tuple:
    """One teacher-forced forward (call inside `eager_attention(model)`) over the prompt of row 0 plus the tokens it
    generated, with the rollout's latents patched into their slots: the same sequence the model decoded, now
    with every layer's attention maps. Returns (lm output with .attentions, ids (1, S), prompt length L,
    image_grid_thw, number of generated positions)."""
    dev = model.device
    n_gen = int(out.gen_mask[0].sum())
    gen = out.sequences[0, :n_gen].to(dev)
    p_ids = enc["input_ids"][:1].to(dev)
    L = p_ids.shape[1]
    ids = torch.cat([p_ids, gen[None]], dim=1)
    mm = enc.get("mm_token_type_ids")
    mm = (p_ids == model.config.image_token_id).long() if mm is None else mm[:1].to(dev)
    mm = torch.cat([mm, torch.zeros_like(gen)[None]], dim=1)
    attn = torch.ones_like(ids)
    grid = enc.get("image_grid_thw")
    img = None
    if enc.get("pixel_values") is not None:
        grid = grid.to(dev)
        img = image_embeddings(model, enc["pixel_values"].to(dev), grid)
    x = embed_with_images(model, ids, img).clone()
    lat = out.latent_mask[0, :n_gen].nonzero().squeeze(1)
    if lat.numel():
        x[0, L + lat] = out.z[0, : lat.numel()].to(x.dtype)
    pos, _ = rope_positions(model, ids, mm, attn, grid)
    res = model.model.language_model(inputs_embeds=x, attention_mask=attn, position_ids=pos, output_attentions=True)
    return res, ids, L, grid, n_gen


@torch.no_grad()
def attention_profile(lm: LoadedModel, sample: Sample, k_latent: int | None = None,
                      max_new_tokens: int = 32) -> AttentionResult:
    model, dev = lm.model, lm.model.device
    k = lm.spec.k_latent if k_latent is None else k_latent
    enc, _ = encode_batch(lm.processor, [sample], lm.spec.prompt_style)
    cfg = DecodeConfig(k_latent=k, max_new_tokens=max_new_tokens, force_start=k > 0)
    with eager_attention(model):
        out = latent_generate(model, enc, lm.ids, cfg)
        res, ids, L, grid, n_gen = rollout_attentions(model, enc, out)
    img = enc.get("pixel_values")
    is_img = ids[0] == model.config.image_token_id
    q = torch.arange(L - 1, L - 1 + max(n_gen, 1), device=dev)
    shares, maps = [], []
    for a in res.attentions:  # (1, H, S, S)
        aq = a[0][:, q].float()  # (H, Q, S)
        shares.append(float(aq[..., is_img].sum(-1).mean()))
        maps.append(aq[..., is_img].mean(dim=(0, 1)))  # (n_img_tokens,)
    heat, size = None, None
    if img is not None:
        heat = grid_heatmap(torch.stack(maps).mean(0), grid[0])
        size = open_image(sample.images[0]).size
    return AttentionResult(sample.sample_id, np.array(shares), heat, size, sample_rois(sample), n_gen)


def grid_heatmap(values: torch.Tensor, grid_thw: torch.Tensor) -> np.ndarray:
    """One value per visual token of an image (merger order; extra values of later images are ignored) as a
    (grid_h / 2, grid_w / 2) map over the image, averaged over its t frames, min-max normalised to [0, 1] (a flat
    map is all zeros)."""
    t, gh, gw = (int(v) for v in grid_thw)
    n_first = t * (gh // 2) * (gw // 2)
    m = values[:n_first].float().reshape(t, gh // 2, gw // 2).mean(0).cpu().numpy()
    rng = m.max() - m.min()
    return (m - m.min()) / rng if rng > 0 else np.zeros_like(m)


def attention_profiles(lm: LoadedModel, samples: Sequence[Sample], k_latent: int | None = None,
                       max_new_tokens: int = 32) -> list[AttentionResult]:
    return [attention_profile(lm, s, k_latent, max_new_tokens) for s in samples]


def mean_visual_share(results: Sequence[AttentionResult]) -> np.ndarray:
    return np.mean([r.visual_share for r in results], axis=0)

"""ROI latent targets on the Qwen2.5-VL merged-token grid (docs/method.md §3, paper Eq. 1).

Box (x1, y1, x2, y2) in ORIGINAL image pixels
  -> the processor's own resize (`smart_resize`: multiples of patch*merge = 28 px within the pixel budget)
  -> merged-token grid (H_t, W_t) = (grid_h / 2, grid_w / 2) of `image_grid_thw`; one cell = 28x28 resized px
  -> cells x in [floor(x1/W*W_t), ceil(x2/W*W_t)), same for y, at least one cell, row-major i = y*W_t + x
     (the merger's output order); several boxes: sorted union
  -> K contiguous buckets, bucket k = cells[floor(k*n/K) : floor((k+1)*n/K)] (sizes differ by at most one)
  -> target z*_k = mean of the merger-output rows of bucket k; an empty bucket (n < K) takes the target of the
     nearest non-empty bucket (ties: the earlier one).
The "w/o ROI" ablation uses `full_image_targets`: every z*_k is the mean of all visual tokens of the image.
Targets are constants: merger outputs are computed under no_grad.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from medlvr.training.vlm_inputs import image_embeddings

Box = Sequence[float]  # (x1, y1, x2, y2) in original image pixels


@dataclass(frozen=True)
class TokenGrid:
    """Resized image size (pixels) and merged-token grid (H_t, W_t) of one image."""

    resized_h: int
    resized_w: int
    grid_h: int
    grid_w: int


def token_grid(image_processor, height: int, width: int) -> TokenGrid:
    """Grid for an image of (height, width) px, via the image processor's own `smart_resize` and settings."""
    smart_resize = importlib.import_module(type(image_processor).__module__).smart_resize
    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size  # SizeDict: shortest_edge / longest_edge are the min / max pixel budget
    rh, rw = smart_resize(height, width, factor=factor, min_pixels=size["shortest_edge"],
                          max_pixels=size["longest_edge"])
    return TokenGrid(rh, rw, rh // factor, rw // factor)


def grid_from_thw(image_grid_thw: torch.Tensor, merge_size: int = 2) -> tuple[int, int]:
    """(H_t, W_t) from one `image_grid_thw` row (t, h, w) in 14-px patches."""
    _, h, w = (int(v) for v in image_grid_thw)
    return h // merge_size, w // merge_size


def _span(lo: float, hi: float, size: int, n_cells: int) -> tuple[int, int]:
    """Half-open cell range [a, b) covering [lo, hi] px of an axis of `size` px split into n_cells cells."""
    # Fraction: exact, so a box edge on a cell boundary never flips cells through float rounding
    a = math.floor(Fraction(lo) * n_cells / size)
    b = math.ceil(Fraction(hi) * n_cells / size)
    a = min(max(a, 0), n_cells - 1)
    b = min(max(b, a + 1), n_cells)  # at least one cell
    return a, b


def box_cells(boxes: Sequence[Box], image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
    """Sorted union of merged-token cells (row-major indices into H_t*W_t) covered by the boxes. -> (n,) long."""
    H, W = image_hw
    Ht, Wt = grid_hw
    if not boxes:
        raise ValueError("need at least one box")
    cells = set()
    for x1, y1, x2, y2 in boxes:
        if x2 < x1 or y2 < y1:
            raise ValueError(f"box must be (x1, y1, x2, y2) with x1 <= x2, y1 <= y2: {(x1, y1, x2, y2)}")
        xa, xb = _span(x1, x2, W, Wt)
        ya, yb = _span(y1, y2, H, Ht)
        cells.update(y * Wt + x for y in range(ya, yb) for x in range(xa, xb))
    return torch.tensor(sorted(cells), dtype=torch.long)


def bucket_means(features: torch.Tensor, k: int) -> torch.Tensor:
    """(n, D) ordered rows -> (K, D) means of K contiguous buckets; empty buckets from the nearest non-empty."""
    n = features.shape[0]
    if n == 0 or k < 1:
        raise ValueError(f"need n >= 1 rows and K >= 1, got n={n}, K={k}")
    bounds = torch.arange(k + 1) * n // k  # bucket j = [bounds[j], bounds[j+1])
    bucket = torch.searchsorted(bounds[1:], torch.arange(n), right=True).to(features.device)  # (n,)
    sums = torch.zeros(k, features.shape[1], dtype=torch.float32, device=features.device)
    sums.index_add_(0, bucket, features.float())
    sizes = (bounds[1:] - bounds[:-1]).to(features.device)
    means = sums / sizes.clamp(min=1).unsqueeze(-1)
    nonempty = (sizes > 0).nonzero().squeeze(1)
    # nearest non-empty bucket; argmin returns the first minimum, i.e. the earlier bucket on ties
    nearest = nonempty[(torch.arange(k, device=features.device)[:, None] - nonempty[None]).abs().argmin(1)]
    return means[nearest].to(features.dtype)


def roi_targets(
    merger_out: torch.Tensor,
    boxes: Sequence[Box],
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    k: int,
) -> torch.Tensor:
    """Targets (K, D) for one image. merger_out: (H_t*W_t, D) merger output of that image, row-major."""
    Ht, Wt = grid_hw
    if merger_out.shape[0] != Ht * Wt:
        raise ValueError(f"merger output has {merger_out.shape[0]} rows, grid {Ht}x{Wt} needs {Ht * Wt}")
    cells = box_cells(boxes, image_hw, grid_hw).to(merger_out.device)
    return bucket_means(merger_out.detach()[cells], k)


def full_image_targets(merger_out: torch.Tensor, k: int) -> torch.Tensor:
    """"w/o ROI" targets (K, D): the mean of all visual tokens of the image, for every k."""
    return merger_out.detach().float().mean(0).to(merger_out.dtype).expand(k, -1).clone()


@torch.no_grad()
def batch_roi_targets(
    model,
    image_processor,
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    boxes: Sequence[Sequence[Box] | None],
    k: int,
    image_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Targets (n_images, K, D) for a processor batch; `boxes[i] is None` -> full-image targets for image i.

    image_embeds: the batch's merger output (sum_i t*h*w/4, D) if the caller already has it (no re-encoding).

    image_sizes: original (height, width) per image. The grid is taken from `image_grid_thw` and cross-checked
    against the processor's resize of the original size (a mismatch means the boxes refer to another size).
    """
    merge = image_processor.merge_size
    if image_embeds is None:
        image_embeds = image_embeddings(model, pixel_values.to(model.device), image_grid_thw.to(model.device))
    feats = image_embeds.detach()
    per_image = torch.split(feats, (image_grid_thw.prod(-1) // merge**2).tolist())
    out = []
    for v, thw, (h, w), bx in zip(per_image, image_grid_thw, image_sizes, boxes, strict=True):
        grid_hw = grid_from_thw(thw, merge)
        expected = token_grid(image_processor, h, w)
        if (expected.grid_h, expected.grid_w) != grid_hw:
            raise ValueError(f"image {h}x{w}: processor grid {grid_hw} != smart_resize grid {expected}")
        out.append(full_image_targets(v, k) if bx is None else roi_targets(v, bx, (h, w), grid_hw, k))
    return torch.stack(out)

"""ROI targets: cells agree with the processor's resize and patch layout; buckets match a slow reference."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import Qwen2VLImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from medlvr.training.roi_targets import (
    batch_roi_targets,
    box_cells,
    bucket_means,
    full_image_targets,
    grid_from_thw,
    roi_targets,
    token_grid,
)

BUDGETS = [(56 * 56, 28 * 28 * 1280), (56 * 56, 28 * 28 * 16), (28 * 28 * 64, 28 * 28 * 256)]


@st.composite
def image_and_box(draw):
    h = draw(st.integers(20, 700))
    w = draw(st.integers(max(20, h // 8), min(700, 8 * h)))
    x1 = draw(st.integers(0, w - 1))
    y1 = draw(st.integers(0, h - 1))
    x2 = draw(st.integers(x1 + 1, w))
    y2 = draw(st.integers(y1 + 1, h))
    return h, w, (x1, y1, x2, y2), draw(st.sampled_from(BUDGETS))


def _cell_brightness(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Mean red-channel intensity in [0, 1] of each merged cell, read back from the processor's patch rows."""
    n_cells = int(grid_thw.prod()) // 4
    x = pixel_values.view(n_cells, 4, 3, 2, 14, 14)[:, :, 0]  # rows: cell-major, 2x2 sub-patches, (C, t, p, p)
    return (x * OPENAI_CLIP_STD[0] + OPENAI_CLIP_MEAN[0]).mean(dim=(1, 2, 3, 4))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_and_box())
def test_roi_cells_agree_with_processor(case):
    h, w, box, (min_px, max_px) = case
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": min_px, "longest_edge": max_px})
    img = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    enc = ip(images=[Image.fromarray(img)], return_tensors="pt")
    thw = enc["image_grid_thw"][0]
    grid = token_grid(ip, h, w)
    assert (grid.grid_h, grid.grid_w) == grid_from_thw(thw)
    assert (grid.resized_h, grid.resized_w) == (int(thw[1]) * 14, int(thw[2]) * 14)

    Ht, Wt = grid.grid_h, grid.grid_w
    cells = box_cells([box], (h, w), (Ht, Wt))
    assert cells.numel() >= 1 and torch.equal(cells, cells.unique())  # sorted, no duplicates
    assert 0 <= cells.min() and cells.max() < Ht * Wt
    ys, xs = cells // Wt, cells % Wt
    # a full rectangle of cells whose pixel extent covers the box (cell = W/Wt original px wide)
    n_rows, n_cols = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
    assert cells.numel() == n_rows * n_cols
    assert xs.min() * w <= x1 * Wt + 1e-9 and (xs.max() + 1) * w >= x2 * Wt - 1e-9
    assert ys.min() * h <= y1 * Ht + 1e-9 and (ys.max() + 1) * h >= y2 * Ht - 1e-9
    # tight: floor / ceil, not one cell wider
    assert int(xs.min()) == min(math.floor(x1 * Wt / w), Wt - 1) and int(xs.max()) + 1 == max(
        math.ceil(x2 * Wt / w), int(xs.min()) + 1)
    # the processor's own patches: every cell that is mostly box-bright is one of ours (row-major order)
    bright = (_cell_brightness(enc["pixel_values"], thw) > 0.5).nonzero().squeeze(1)
    assert set(bright.tolist()) <= set(cells.tolist())


def test_roi_cells_known_example():
    # 448x224 (h x w) image, default budget: no resize, grid 16 x 8 merged cells of 28 px
    Ht, Wt = 16, 8
    cells = box_cells([(30, 0, 56, 28)], (448, 224), (Ht, Wt))
    assert cells.tolist() == [1]  # x 30..56 -> cell 1 only; y 0..28 -> row 0
    cells = box_cells([(0, 0, 10, 10), (200, 430, 224, 448)], (448, 224), (Ht, Wt))
    assert cells.tolist() == [0, 15 * 8 + 7]  # two boxes: sorted union
    cells = box_cells([(27, 27, 29, 29)], (448, 224), (Ht, Wt))
    assert cells.tolist() == [0, 1, 8, 9]
    assert box_cells([(0, 0, 224, 448)], (448, 224), (Ht, Wt)).tolist() == list(range(Ht * Wt))
    assert box_cells([(224, 448, 224, 448)], (448, 224), (Ht, Wt)).tolist() == [Ht * Wt - 1]  # degenerate box


def _slow_buckets(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: element j goes to bucket ceil((j+1)K/n) - 1; python sums; empty -> scan outward, earlier first."""
    n = rows.shape[0]
    members = [[] for _ in range(k)]
    for j in range(n):
        members[-(-(j + 1) * k // n) - 1].append(rows[j].tolist())
    means = [None if not m else [sum(c) / len(m) for c in zip(*m)] for m in members]
    out = []
    for b in range(k):
        for d in range(k):
            if b - d >= 0 and means[b - d] is not None:
                out.append(means[b - d])
                break
            if b + d < k and means[b + d] is not None:
                out.append(means[b + d])
                break
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 16), seed=st.integers(0, 10_000))
def test_bucket_means_match_slow_reference(n, k, seed):
    rows = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = bucket_means(rows, k)
    assert got.shape == (k, 5)
    torch.testing.assert_close(got, _slow_buckets(rows, k))


def test_bucket_sizes_are_near_equal_and_contiguous():
    rows = torch.arange(10, dtype=torch.float64).unsqueeze(1)
    got = bucket_means(rows, 4).squeeze(1).tolist()
    assert got == [0.5, 3.0, 5.5, 8.0]  # [0,1] [2,3,4] [5,6] [7,8,9]
    got = bucket_means(torch.tensor([[1.0], [2.0]], dtype=torch.float64), 5).squeeze(1).tolist()
    # bounds floor(k*2/5) = 0,0,0,1,1,2: buckets 2 and 4 hold a row; 0, 1 take bucket 2, and bucket 3 is as near
    # to 2 as to 4, so it takes the earlier one
    assert got == [1.0, 1.0, 1.0, 1.0, 2.0]


def test_roi_and_full_image_targets_on_the_model(tiny):
    ip = tiny.processor.image_processor
    sizes = [(448, 224), (100, 260)]
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8))
            for i, (h, w) in enumerate(sizes)]
    enc = ip(images=imgs, return_tensors="pt")
    boxes = [[(30, 40, 120, 300)], None]
    K = 8
    targets = batch_roi_targets(tiny.model, ip, enc["pixel_values"], enc["image_grid_thw"], sizes, boxes, K)
    assert targets.shape == (2, K, tiny.model.config.text_config.hidden_size) and not targets.requires_grad
    with torch.no_grad():
        feats = tiny.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output
    g0 = grid_from_thw(enc["image_grid_thw"][0])
    cells = box_cells(boxes[0], sizes[0], g0)
    torch.testing.assert_close(targets[0], _slow_buckets(feats[0][cells].double(), K).float())
    torch.testing.assert_close(targets[0], roi_targets(feats[0], boxes[0], sizes[0], g0, K))
    torch.testing.assert_close(targets[1], feats[1].mean(0).expand(K, -1))
    torch.testing.assert_close(full_image_targets(feats[1], K), targets[1])
    with pytest.raises(ValueError):  # boxes given for another image size than the processed one
        batch_roi_targets(tiny.model, ip, enc["pixel_values"], enc["image_grid_thw"], [(900, 448), sizes[1]],
                          boxes, K)

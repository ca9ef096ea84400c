"""Property tests for the box geometry: resize plans, exact round trips, validation."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlvr.corpus.normalize import NormaliseConfig, check_box, plan_geometry, resize

sizes = st.integers(min_value=2, max_value=3000)
cfgs = st.builds(NormaliseConfig, max_side=st.integers(16, 1024), upscale=st.booleans(), pad_to_square=st.booleans())


@st.composite
def image_and_box(draw):
    w, h = draw(sizes), draw(sizes)
    x0 = draw(st.floats(0, w - 1, allow_nan=False))
    y0 = draw(st.floats(0, h - 1, allow_nan=False))
    x1 = draw(st.floats(x0 + 1, w, allow_nan=False))
    y1 = draw(st.floats(y0 + 1, h, allow_nan=False))
    return w, h, (x0, y0, x1, y1)


@settings(max_examples=300, deadline=None)
@given(image_and_box(), cfgs)
def test_box_round_trip_is_exact(ib, cfg):
    w, h, box = ib
    geo = plan_geometry(w, h, cfg)
    back = geo.to_original(geo.to_normalised(box))
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-9 * max(w, h)) for a, b in zip(back, box))


@settings(max_examples=300, deadline=None)
@given(image_and_box(), cfgs)
def test_normalised_box_stays_inside_normalised_image(ib, cfg):
    w, h, box = ib
    geo = plan_geometry(w, h, cfg)
    x0, y0, x1, y1 = geo.to_normalised(box)
    eps = 1e-9 * max(geo.out_w, geo.out_h)
    assert -eps <= x0 < x1 <= geo.out_w + eps
    assert -eps <= y0 < y1 <= geo.out_h + eps


@settings(max_examples=200, deadline=None)
@given(sizes, sizes, cfgs)
def test_plan_respects_budget_and_aspect(w, h, cfg):
    geo = plan_geometry(w, h, cfg)
    inner_w = geo.out_w - geo.pad[0] - geo.pad[2]
    inner_h = geo.out_h - geo.pad[1] - geo.pad[3]
    if max(w, h) > cfg.max_side or cfg.upscale:
        assert max(inner_w, inner_h) == cfg.max_side
    else:
        assert (inner_w, inner_h) == (w, h)
    # the scales are the exact ratio of the pixel grids, so pixel edges map to pixel edges
    assert geo.scale_x == inner_w / w and geo.scale_y == inner_h / h
    if cfg.pad_to_square:
        assert geo.out_w == geo.out_h
    assert abs(inner_w / inner_h - w / h) <= max(1 / inner_h, 1 / inner_w) * (w / h) * 1.01 + 1 / inner_h


@pytest.mark.parametrize("shape", [(37, 91), (91, 37, 3), (600, 300), (5, 5, 3)])
@pytest.mark.parametrize("pad", [False, True])
def test_resize_matches_geometry(shape, pad):
    img = (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)
    geo = plan_geometry(shape[1], shape[0], NormaliseConfig(max_side=64, pad_to_square=pad))
    out = resize(img, geo)
    assert out.shape[:2] == (geo.out_h, geo.out_w)
    assert out.ndim == img.ndim


@pytest.mark.parametrize("box,reason", [
    ((float("nan"), 0, 5, 5), "NaN"),
    ((0, 0, float("inf"), 5), "NaN or infinite"),
    ((5, 5, 5, 9), "degenerate"),
    ((6, 5, 2, 9), "degenerate"),
    ((120, 5, 130, 9), "outside"),
    ((-30, -30, -1, -1), "outside"),
    ((99.5, 10, 140, 20), "smaller than one pixel"),
    (("a", 1, 2, 3), "not four numbers"),
    ((1, 2, 3), "not four numbers"),
])
def test_bad_boxes_are_rejected_with_reason(box, reason):
    clipped, why, _ = check_box(box, 100, 50)
    assert clipped is None and reason in why


def test_partial_box_is_clipped_and_flagged():
    box, why, clipped = check_box((-10, 40, 30, 70), 100, 50)
    assert why is None and clipped and box == (0.0, 40.0, 30.0, 50.0)
    box, why, clipped = check_box((1, 2, 3, 4), 100, 50)
    assert not clipped and box == (1.0, 2.0, 3.0, 4.0)

"""Vectorised M-RoPE positions (issue 18 §2): `rope_index` equals transformers' own per-row loop
(`Qwen2_5_VLModel.get_rope_index`) on many random layouts of text, images and padding."""

import random

import pytest
import torch

from medlvr.training.vlm_inputs import rope_index, rope_positions

IMG, START, END = 7, 5, 6  # token ids for the layout only (positions depend on mm_token_type_ids)


def _row(rng: random.Random):
    """One row: text runs and images (<start> image-pads <end>), as (ids, types, grids)."""
    ids, types, grids = [], [], []
    for _ in range(rng.randint(1, 4)):
        n_text = rng.randint(1, 6)
        ids += [rng.randint(10, 99) for _ in range(n_text)]
        types += [0] * n_text
        if rng.random() < 0.7:
            t, h, w = rng.choice([1, 1, 1, 2]), 2 * rng.randint(1, 6), 2 * rng.randint(1, 6)
            n = t * h * w // 4
            ids += [START] + [IMG] * n + [END]
            types += [0] + [1] * n + [0]
            grids.append([t, h, w])
    return ids, types, grids


def _batch(seed: int):
    rng = random.Random(seed)
    rows = [_row(rng) for _ in range(rng.randint(1, 4))]
    side = rng.choice(["left", "right", "none"])
    L = max(len(r[0]) for r in rows) + (0 if side == "none" else rng.randint(0, 3))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (r_ids, r_types, _) in enumerate(rows):
        n = len(r_ids)
        sl = slice(L - n, L) if side != "right" else slice(0, n)
        ids[i, sl], types[i, sl], mask[i, sl] = torch.tensor(r_ids), torch.tensor(r_types), 1
    grids = [g for r in rows for g in r[2]]
    grid = torch.tensor(grids, dtype=torch.long) if grids else None
    return ids, types, (None if side == "none" and bool(mask.all()) and seed % 2 else mask), grid


@pytest.mark.parametrize("block", range(10))
def test_rope_index_equals_transformers_loop(tiny, block):
    reference = tiny.model.model.get_rope_index
    checked = 0
    for seed in range(block * 30, block * 30 + 30):
        ids, types, mask, grid = _batch(seed)
        want_pos, want_delta = reference(ids, types, image_grid_thw=grid, attention_mask=mask)
        got_pos, got_delta = rope_index(ids, types, mask, grid, spatial_merge_size=2)
        assert torch.equal(got_pos, want_pos), seed
        assert torch.equal(got_delta, want_delta.to(got_delta.dtype)), seed
        checked += 1
    assert checked == 30


def test_rope_positions_uses_the_vectorised_index_on_a_real_batch(tiny, make_batch):
    batch = make_batch([(224, 224), (168, 308), (56, 112)])
    args = (batch["input_ids"], batch["mm_token_type_ids"])
    want = tiny.model.model.get_rope_index(*args, image_grid_thw=batch["image_grid_thw"],
                                           attention_mask=batch["attention_mask"])
    got = rope_positions(tiny.model, *args, batch["attention_mask"], batch["image_grid_thw"])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1].to(got[1].dtype))


def test_rope_index_rejects_video_and_grid_mismatch():
    ids = torch.tensor([[1, 7, 7, 7, 7, 2]])
    types = torch.tensor([[0, 1, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match="image_grid_thw"):
        rope_index(ids, types, None, None)
    with pytest.raises(ValueError, match="video"):
        rope_index(ids, types * 2, None, torch.tensor([[1, 4, 4]]))

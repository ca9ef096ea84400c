"""Qwen2.5-VL decoder inputs built explicitly: image embeddings, M-RoPE positions, per-row vision bookkeeping.

Decoding and replay call the text decoder (`model.model.language_model`) directly with `inputs_embeds` and
explicit `position_ids`, so nothing depends on `model.model.rope_deltas`, the mutable state every
`Qwen2_5_VLModel.forward` overwrites (docs/training.md §6.1 items 5-6).
"""

from __future__ import annotations

import torch


def image_embeddings(model, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
    """Merger outputs of all images, concatenated in image order: (sum_i t*h*w/4, D).

    pixel_values: (sum_i t*h*w, C*tp*p*p) as the processor returns it; image_grid_thw: (n_images, 3).
    """
    feats = model.model.get_image_features(pixel_values, image_grid_thw)
    return torch.cat(feats.pooler_output, dim=0)


def images_per_row(input_ids: torch.Tensor, image_token_id: int) -> tuple[list[int], list[int]]:
    """Per row: (number of images, number of image tokens). input_ids (B, L).

    An image is a maximal run of `<|image_pad|>` tokens; the processor lays images out in row order, so these
    counts split `image_grid_thw` and the concatenated image embeddings per row.
    """
    is_img = input_ids == image_token_id
    run_starts = is_img.clone()
    run_starts[:, 1:] &= ~is_img[:, :-1]
    return run_starts.sum(-1).tolist(), is_img.sum(-1).tolist()


def select_rows_vision(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    image_embeds: torch.Tensor | None,
    image_token_id: int,
    row_index: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Grid rows and image embeddings for rows `row_index` (N,) of a B-row prompt batch (repeats allowed).

    Lets G samples per prompt reuse ONE image encoding: returns (image_grid_thw (n', 3), image_embeds (m', D)).
    """
    if image_grid_thw is None:
        return None, None
    n_img, n_tok = images_per_row(input_ids, image_token_id)
    grids = torch.split(image_grid_thw, n_img)
    embeds = torch.split(image_embeds, n_tok)
    idx = row_index.tolist()
    return torch.cat([grids[i] for i in idx]), torch.cat([embeds[i] for i in idx])


def embed_with_images(
    model, input_ids: torch.Tensor, image_embeds: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """Token embeddings (B, L, D) with the image rows scattered into the `<|image_pad|>` positions (out of place)."""
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    if image_embeds is None:
        return inputs_embeds
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1)
    if int(mask.sum()) != image_embeds.shape[0]:
        raise ValueError(f"{int(mask.sum())} image tokens but {image_embeds.shape[0]} image embedding rows")
    return inputs_embeds.masked_scatter(mask, image_embeds.to(inputs_embeds.dtype))


def rope_index(
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    spatial_merge_size: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's 3-D M-RoPE positions for text + still images, for the whole batch at once.

    Same result as transformers' `Qwen2_5_VLModel.get_rope_index` (a Python loop over rows and token groups with a
    `.tolist()` per row) without any per-row loop or host sync. Rules: over the non-pad tokens of a row, a text
    token takes the running position p on all three axes and advances it by 1; an image (a maximal run of image
    tokens, grid (t, h, w) / merge) takes p + (t_i, h_i, w_i) for its token (t_i, h_i, w_i) in row-major order
    and advances p by max(h, w). Pad positions are 0. rope_deltas (B, 1) = max position + 1 - non-pad length.

    input_ids, mm_token_type_ids (0 text, 1 image), attention_mask: (B, L); image_grid_thw: (n_images, 3), the
    images in row order. Returns positions (3, B, L) and rope_deltas (B, 1), both long.
    """
    B, L = input_ids.shape
    dev = input_ids.device
    valid = torch.ones(B, L, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.bool()
    if bool((mm_token_type_ids.to(dev)[valid] > 1).any()):
        raise ValueError("video tokens are not supported (MedLVR feeds still images only)")
    is_img = (mm_token_type_ids.to(dev) == 1) & valid
    prev = torch.zeros_like(is_img)
    prev[:, 1:] = is_img[:, :-1]
    nxt = torch.zeros_like(is_img)
    nxt[:, :-1] = is_img[:, 1:]
    run_start, run_end = is_img & ~prev, is_img & ~nxt
    n_runs = int(run_start.sum())
    col = torch.arange(L, device=dev).expand(B, L)
    if n_runs:
        if image_grid_thw is None or image_grid_thw.shape[0] != n_runs:
            got = 0 if image_grid_thw is None else image_grid_thw.shape[0]
            raise ValueError(f"{n_runs} images in the tokens but {got} rows in image_grid_thw")
        grid = image_grid_thw.to(dev).long() // torch.tensor([1, spatial_merge_size, spatial_merge_size], device=dev)
        # image number of each token (row-major order = the order of image_grid_thw), and its offset in the run
        run_id = (run_start.reshape(-1).long().cumsum(0) - 1).clamp(min=0).reshape(B, L)
        gh, gw = grid[run_id, 1], grid[run_id, 2]
        run_first_col = torch.where(run_start, col, torch.zeros_like(col)).cummax(dim=1).values
        k = col - run_first_col
    else:
        gh = gw = k = torch.ones_like(col)
    advance = (valid & ~is_img).long() + torch.where(run_end, torch.maximum(gh, gw), 0)
    start = advance.cumsum(1) - advance  # running position before each token
    zero = torch.zeros_like(start)
    pos = torch.stack([
        start + torch.where(is_img, k // (gh * gw), zero),  # temporal index (time interval 1 for still images)
        start + torch.where(is_img, (k // gw) % gh, zero),
        start + torch.where(is_img, k % gw, zero),
    ]).masked_fill(~valid, 0)
    deltas = pos.amax(dim=(0, 2)) + 1 - valid.sum(1)
    return pos.to(input_ids.dtype), deltas.unsqueeze(1)


def rope_positions(
    model,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D M-RoPE positions (3, B, L) and rope_deltas (B, 1) for a (left-padded) sequence with images.

    Needs `input_ids` + `mm_token_type_ids` (0 text, 1 image): generated and latent positions are text (0).
    Vectorised (`rope_index`): equal to `model.model.get_rope_index`, without its Python loop per row.
    """
    return rope_index(input_ids, mm_token_type_ids, attention_mask, image_grid_thw,
                      model.config.vision_config.spatial_merge_size)


def step_positions(attention_mask: torch.Tensor, rope_deltas: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Positions (3, B, n) of the last n columns of the full 2-D mask (B, past + n), as `generate` builds them.

    After the prompt every position is text-like: the same id on the 3 axes, `#non-pad before it + rope_delta`.
    Counting non-pad tokens (not the cache length) keeps left-padded rows right.
    """
    pos = attention_mask.long().cumsum(-1)[:, -n:] - 1 + rope_deltas
    return pos.unsqueeze(0).expand(3, -1, -1)

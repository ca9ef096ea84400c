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


def rope_positions(
    model,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D M-RoPE positions (3, B, L) and rope_deltas (B, 1) for a (left-padded) sequence with images.

    Needs `input_ids` + `mm_token_type_ids` (0 text, 1 image): generated and latent positions are text (0).
    """
    pos, deltas = model.model.get_rope_index(
        input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
    )
    return pos, deltas.to(pos.device)


def step_positions(attention_mask: torch.Tensor, rope_deltas: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Positions (3, B, n) of the last n columns of the full 2-D mask (B, past + n), as `generate` builds them.

    After the prompt every position is text-like: the same id on the 3 axes, `#non-pad before it + rope_delta`.
    Counting non-pad tokens (not the cache length) keeps left-padded rows right.
    """
    pos = attention_mask.long().cumsum(-1)[:, -n:] - 1 + rope_deltas
    return pos.unsqueeze(0).expand(3, -1, -1)

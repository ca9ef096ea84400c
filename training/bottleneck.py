"""Visual bottleneck (docs/mechanism.md, issue 16): the answer side may not attend to the visual tokens.

Under the bottleneck, `<Medlvr_End>` and every token after it (the answer) cannot attend to the `<|image_pad|>`
positions; the prompt text, `<Medlvr_Start>` and the latent slots keep full attention. The image then reaches
the answer only through positions that saw it: the latent slots (the intended route) and the prompt text after
the image (a residual route this mask leaves open on purpose: the answer must still read the question).

The mask is a 4-D attention mask handed to the decoder; transformers uses a given 4-D mask as is (masking_utils):
`sdpa` takes it as booleans (True = may attend), `eager` as an additive float mask (0 / dtype min).
`flash_attention_2` cannot take an arbitrary mask, so a bottleneck with it is a config error
(`check_attn_implementation`), not a silent fallback.

Text-blind prompt (`text_blind`, issue 27): the bottleneck alone leaves the prompt text after the image as a
route (the question tokens read the image, the answer reads them). A model trained with `latent.text_blind: true`
bars every prompt position after the image (except `<Medlvr_Start>`) from the visual keys, in every pass (open
and closed, SFT, VLPO rollouts / replay / reference, inference), so only `<Medlvr_Start>` and the latent slots
read the image. The flag rides on the model object (`set_text_blind` / `text_blind_of`) and is saved in the
checkpoint's `medlvr_latent.json`, so every loader (VLPO, evaluation, `medlvr ask`) applies the same mask.

Per-batch schedule (`BottleneckConfig`): probability p of closing a batch, constant or linear p -> p_end over
training; the draw is a pure function of (seed, step), so a resumed run makes the same draws.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BottleneckConfig:
    p: float = 0.0  # probability that a batch trains closed (0: off, the paper's recipe; 1: always)
    p_end: float | None = None  # None: constant p; else p anneals linearly from p (first step) to p_end (last)

    def __post_init__(self):
        for name, v in (("p", self.p), ("p_end", self.p_end)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"bottleneck.{name} must be in [0, 1], got {v}")

    @property
    def enabled(self) -> bool:
        return self.p > 0 or bool(self.p_end)

    def probability(self, step: int, total_steps: int) -> float:
        """p at 0-based optimizer step `step` of `total_steps`."""
        if self.p_end is None or total_steps <= 1:
            return self.p
        frac = min(max(step / (total_steps - 1), 0.0), 1.0)
        return self.p + (self.p_end - self.p) * frac

    def closed(self, seed: int, step: int, total_steps: int) -> bool:
        """Whether the batch of optimizer step `step` trains closed; deterministic in (seed, step)."""
        p = self.probability(step, total_steps)
        if p <= 0:
            return False
        if p >= 1:
            return True
        return random.Random(f"bottleneck:{seed}:{step}").random() < p


def check_attn_implementation(impl: str) -> None:
    """The bottleneck needs a 4-D mask: sdpa or eager. flash_attention_2 only takes padding masks."""
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"the latent bottleneck needs attn_implementation sdpa or eager (a 4-D attention mask); "
                         f"{impl!r} cannot take one")


def closed_attention_mask(key_valid: torch.Tensor, key_image: torch.Tensor, query_closed: torch.Tensor,
                          attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D mask (N, 1, q, S) for the LAST q columns of a causal sequence of S keys.

    key_valid (N, S): key exists (the 2-D padding mask); key_image (N, S): key is a visual token;
    query_closed (N, q): that query is on the answer side (may not see visual keys).
    Every query keeps itself, so a padding query never has an empty row (sdpa would give NaN).
    """
    n, s = key_valid.shape
    q = query_closed.shape[1]
    dev = key_valid.device
    q_abs = torch.arange(s - q, s, device=dev)  # absolute column of each query
    k_abs = torch.arange(s, device=dev)
    causal = k_abs[None, :] <= q_abs[:, None]  # (q, S)
    allowed = causal[None] & key_valid.bool()[:, None, :]
    allowed = allowed & ~(query_closed.bool()[:, :, None] & key_image.bool()[:, None, :])
    allowed = allowed | (k_abs[None, :] == q_abs[:, None])[None]
    allowed = allowed[:, None]  # (N, 1, q, S), broadcast over heads
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, torch.finfo(dtype).min)
    check_attn_implementation(attn_implementation)
    raise AssertionError("unreachable")


TEXT_BLIND_ATTR = "medlvr_text_blind"


def set_text_blind(model, on: bool) -> None:
    """Mark the model as text-blind (module docstring); `save_checkpoint` records it, `load_model` restores it."""
    setattr(getattr(model, "module", model), TEXT_BLIND_ATTR, bool(on))


def text_blind_of(model) -> bool:
    """Whether the prompt text after the image is barred from the visual keys for this model (default False)."""
    return bool(getattr(getattr(model, "module", model), TEXT_BLIND_ATTR, False))


def text_blind_queries(input_ids: torch.Tensor, image_token_id: int, start_id: int) -> torch.Tensor:
    """(N, S) bool: the positions of prompt ids (N, S) that may not attend to visual keys under `text_blind`:
    after the row's first visual token, neither a visual token nor `<Medlvr_Start>`. Give only prompt columns
    (generated positions follow their own rule)."""
    img = input_ids == image_token_id
    return (img.long().cumsum(-1) > 0) & ~img & (input_ids != start_id)


def attn_implementation_of(model) -> str:
    """The decoder's attention implementation as transformers resolved it."""
    return model.model.language_model.config._attn_implementation

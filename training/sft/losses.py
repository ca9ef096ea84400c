"""ROI-SFT losses as pure functions (docs/method.md §3, Eq. 2-4). Each returns SUMS; the caller divides by the
normaliser of its own term counted over the whole global batch (all micro-batches and ranks), so gradient
accumulation and data parallelism give the same loss as one big batch.

Shapes: N rows, T completion positions, K latent slots, D hidden size.
"""

from __future__ import annotations

import torch


def answer_nll_sum(token_logprobs: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3 summed: -sum of log p over labelled positions. token_logprobs (N, T) float, label_mask (N, T) bool -> ()."""
    return -(token_logprobs * label_mask.to(token_logprobs.dtype)).sum()


def roi_loss_rows(h: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Eq. 2 per row. h, target (N, K, D) -> (N,) float32.

    mse:    (1/K) sum_k ||h_k - z*_k||^2 / D   (mean squared error per dimension)
    cosine: (1/K) sum_k (1 - cos(h_k, z*_k))
    """
    h, target = h.float(), target.float().detach()
    if kind == "mse":
        return (h - target).pow(2).mean(dim=(1, 2))
    if kind == "cosine":
        return (1 - torch.nn.functional.cosine_similarity(h, target, dim=-1)).mean(-1)
    raise ValueError(f"roi loss must be mse or cosine, got {kind!r}")


def roi_loss_sum(h: torch.Tensor, target: torch.Tensor, row_mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Sum of `roi_loss_rows` over rows with a target. row_mask (N,) bool -> ()."""
    per_row = roi_loss_rows(h, target, kind)
    return (per_row * row_mask.to(per_row.device, per_row.dtype)).sum()


@torch.no_grad()
def latent_cosine_sum(h: torch.Tensor, target: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """Metric: sum over rows with a target of the mean over K of cos(h_k, z*_k). (N, K, D) x2, (N,) -> ()."""
    cos = torch.nn.functional.cosine_similarity(h.float(), target.float(), dim=-1).mean(-1)
    return (cos * row_mask.to(cos.device, cos.dtype)).sum()


def sft_loss(nll_sum: torch.Tensor, n_label: float, roi_sum: torch.Tensor, n_roi: float,
             roi_weight: float) -> torch.Tensor:
    """Eq. 4 with separate normalisers: nll_sum / n_label + lambda * roi_sum / n_roi (a term with count 0 adds 0)."""
    loss = nll_sum / n_label if n_label > 0 else nll_sum * 0.0
    if roi_weight > 0 and n_roi > 0:
        loss = loss + roi_weight * roi_sum / n_roi
    return loss

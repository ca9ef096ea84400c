"""Latent ablations at inference (docs/method.md §6 "Beyond"): does the answer depend on the latent evidence?

Each ablation is a `latent_transform(z, rows, slots) -> z'` for `medlvr.training.latent_decode.latent_generate`:

* zero:    every latent input replaced by zeros;
* shuffle: each row is fed the latent another sample computed at the same slot (a cyclic shift over the rows
           that take a latent step together; a batch with a single latent row takes the previous batch's latent
           for that slot, so batch size 1 is still a real shuffle after the first batch);
* noise:   z + alpha * ||z|| * u, u a random unit direction (relative Gaussian noise, seeded).

`ablation_table` turns the scored predictions into accuracy and accuracy drop per benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medlvr.evaluation.config import ABLATIONS


def zero_latents(z: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(z)


class ShuffleLatents:
    """Feed each row a latent from another sample (see module docstring); stateful across batches."""

    def __init__(self):
        self.bank: dict[int, torch.Tensor] = {}  # slot -> a latent (D,) seen in an earlier batch
        self.n_self = 0  # latents that had to be fed unchanged (first batch with a single row)

    def __call__(self, z: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        if n > 1:
            out = z.roll(1, dims=0)
        else:
            k = int(slots[0])
            prev = self.bank.get(k)
            out = z.clone() if prev is None else prev[None].to(z)
            self.n_self += prev is None
        for i in range(n):
            self.bank[int(slots[i])] = z[i].detach().clone()
        return out


class NoiseLatents:
    def __init__(self, alpha: float = 1.0, seed: int = 0):
        self.alpha = float(alpha)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, z: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(z.shape, generator=self.gen, dtype=torch.float32).to(z.device)
        scale = self.alpha * z.float().norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True)
        return (z.float() + scale * eps).to(z.dtype)


def make_transform_factory(kind: str, noise_scale: float = 1.0, seed: int = 0):
    """transform_factory for `medlvr.evaluation.inference.run_predictions` (one transform per batch)."""
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation {kind!r}; known {ABLATIONS}")
    if kind == "zero":
        return lambda batch: zero_latents
    t = ShuffleLatents() if kind == "shuffle" else NoiseLatents(noise_scale, seed)
    return lambda batch: t


UNABLATED = "unablated"  # the column of the model's normal accuracy (not "base": that is a model's name)


def ablation_table(base: Sequence[dict], ablated: dict[str, Sequence[dict]]) -> list[dict]:
    """Scored rows (dicts with benchmark, correct) of the unablated run and of each ablation ->
    one row per benchmark (plus "all"): {benchmark, n, unablated, <kind>, <kind>_drop, ...} (accuracy in %)."""

    def acc_by_bench(rows):
        out: dict[str, list[int]] = {}
        for r in rows:
            out.setdefault(r["benchmark"], []).append(int(bool(r["correct"])))
            out.setdefault("all", []).append(int(bool(r["correct"])))
        return {b: (100.0 * sum(v) / len(v), len(v)) for b, v in out.items()}

    b = acc_by_bench(base)
    ab = {k: acc_by_bench(v) for k, v in ablated.items()}
    table = []
    for bench in sorted(b, key=lambda x: (x == "all", x)):
        row = {"benchmark": bench, "n": b[bench][1], UNABLATED: b[bench][0]}
        for k in ablated:
            if bench in ab[k]:
                row[k] = ab[k][bench][0]
                row[f"{k}_drop"] = b[bench][0] - ab[k][bench][0]
        table.append(row)
    return table

"""PNG plots for the report (matplotlib, Agg backend): Fig. 5 (accuracy vs K per modality) and Fig. 3 (visual
attention share per layer, attention heatmaps over the image with the ROI boxes drawn); `medlvr ask`'s overlay of
where each latent state points (`plot_latent_overlay`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medlvr.evaluation.attention import AttentionResult  # noqa: E402
from medlvr.corpus.evalsets.base import open_image  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (a temp file renamed over `path`: a reader never sees half a PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # the suffix tells matplotlib the format
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def overlay_heatmap(ax, image: np.ndarray, heatmap: np.ndarray) -> None:
    """`heatmap` (any grid over the whole image, values in [0, 1]) stretched over `image` on `ax`."""
    h, w = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.imshow(heatmap, cmap="jet", alpha=0.45, extent=(0, w, h, 0), interpolation="bilinear")


def plot_accuracy_vs_k(series: Mapping[str, Mapping[int, float]], path: Path, title: str = "") -> Path:
    """Fig. 5: one line per modality (and a thick "overall" line), accuracy (%) vs latent budget K."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, pts in sorted(series.items(), key=lambda kv: kv[0] == "overall"):
        ks = sorted(pts)
        ax.plot(ks, [pts[k] for k in ks], marker="o", label=name,
                linewidth=2.5 if name == "overall" else 1.2, color="black" if name == "overall" else None)
    ax.set_xlabel("latent budget K")
    ax.set_ylabel("accuracy (%)")
    all_k = sorted({k for pts in series.values() for k in pts})
    if all_k:
        ax.set_xticks(all_k)
    ax.set_title(title or "Accuracy per modality vs latent budget K")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_visual_share(curves: Mapping[str, np.ndarray], path: Path) -> Path:
    """Fig. 3 (left): share of attention on visual tokens per decoder layer, one line per model."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, y in curves.items():
        ax.plot(np.arange(len(y)), 100 * np.asarray(y), marker="o", label=name)
    ax.set_xlabel("decoder layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers: no 0.5 ticks
    ax.set_ylabel("attention on visual tokens (%)")
    ax.set_title("Share of attention on visual tokens per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_heatmaps(results: Mapping[str, Sequence[AttentionResult]], images: Mapping[str, str], path: Path) -> Path:
    """Fig. 3 (right): rows = samples, columns = models; heatmap over the image, ROI boxes in green.

    results: model -> AttentionResult per sample (same samples, same order); images: sample_id -> image URI.
    """
    models = list(results)
    ids = [r.sample_id for r in results[models[0]]]
    fig, axes = plt.subplots(len(ids), len(models), figsize=(3.2 * len(models), 3.2 * len(ids)), squeeze=False)
    for j, m in enumerate(models):
        for i, r in enumerate(results[m]):
            ax = axes[i][j]
            ax.axis("off")
            if r.heatmap is None:
                ax.set_title(f"{m}: {r.sample_id}\n(no image)", fontsize=8)
                continue
            overlay_heatmap(ax, np.asarray(open_image(images[r.sample_id])), r.heatmap)
            for x0, y0, x1, y1 in r.roi:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=2))
            ax.set_title(f"{m}: {r.sample_id}", fontsize=8)
    return _save(fig, path)


def plot_latent_overlay(image: np.ndarray, heatmaps: Sequence[np.ndarray], titles: Sequence[str], path: Path) -> Path:
    """`medlvr ask`: the image, then one panel per latent state with its similarity map over the image."""
    n = len(heatmaps) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    axes[0][0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes[0][0].set_title("image (as the model sees it)", fontsize=8)
    for ax, heat, title in zip(axes[0][1:], heatmaps, titles):
        overlay_heatmap(ax, image, heat)
        ax.set_title(title, fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    return _save(fig, path)

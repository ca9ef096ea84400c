"""The corpus card: a Markdown page with PNG plots describing a built shard set.

    <out>/card/README.md, counts.png, box_sizes.png, samples.png
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from medlvr.corpus.shards import MANIFEST_NAME


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_counts(manifest: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "modality", "QA pairs per modality"),
                           (axes[1], "question_type", "QA pairs per question type")):
        items = sorted(manifest["counts"][key].items(), key=lambda kv: -kv[1])
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#3b6ea5")
        ax.set_title(title)
        ax.set_xlabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_box_sizes(rel_areas: np.ndarray, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if rel_areas.size:
        ax.hist(np.log10(np.clip(rel_areas, 1e-6, 1)), bins=40, color="#a5553b")
    ax.set_xlabel("log10(box area / image area)")
    ax.set_ylabel("boxes")
    ax.set_title("Box size distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(samples: list[dict], path: Path, cols: int = 4) -> None:
    """A grid of sample images with their boxes drawn; samples: {png, boxes, title}."""
    from PIL import Image

    plt = _plt()
    n = max(1, len(samples))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, s in zip(axes.ravel(), samples):
        img = np.asarray(Image.open(io.BytesIO(s["png"])))
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        for b in s["boxes"]:
            ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="yellow", lw=1.2))
        ax.set_title(s["title"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def collect_from_shards(shard_dir: Path, max_samples: int = 12) -> tuple[np.ndarray, list[dict]]:
    """Relative box areas of every boxed pair and one sample image per dataset, streamed from the shards."""
    areas: list[float] = []
    samples: dict[str, dict] = {}
    for p in sorted(Path(shard_dir).rglob("*.parquet")):
        pf = pq.ParquetFile(p)
        for batch in pf.iter_batches(columns=["dataset", "boxes", "width", "height", "question_type"], batch_size=4096):
            for r in batch.to_pylist():
                if r["question_type"] == "grounding":
                    for b in r["boxes"]:
                        areas.append((b[2] - b[0]) * (b[3] - b[1]) / (r["width"] * r["height"]))
        if len(samples) < max_samples:
            for batch in pf.iter_batches(columns=["dataset", "boxes", "image_png", "question_type", "modality"],
                                         batch_size=256):
                for r in batch.to_pylist():
                    if r["question_type"] == "grounding" and r["dataset"] not in samples and len(samples) < max_samples:
                        samples[r["dataset"]] = {"png": r["image_png"], "boxes": r["boxes"],
                                                 "title": f"{r['dataset']} ({r['modality']})"}
    return np.asarray(areas), [samples[k] for k in sorted(samples)]


def write_card(shard_dir: Path, out_dir: Path, report: dict | None = None) -> Path:
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((shard_dir / MANIFEST_NAME).read_text())
    areas, samples = collect_from_shards(shard_dir)
    plot_counts(manifest, out_dir / "counts.png")
    plot_box_sizes(areas, out_dir / "box_sizes.png")
    plot_samples(samples, out_dir / "samples.png")
    c = manifest["counts"]
    lines = ["# MedLVR grounding corpus", "",
             f"{manifest['rows']} question–answer pairs in {len(manifest['shards'])} shards "
             f"(schema version {manifest['schema_version']}).", ""]
    for key in ("split", "modality", "dataset", "question_type"):
        lines += [f"## Pairs per {key.replace('_', ' ')}", "", f"| {key} | pairs |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(c[key].items())] + [""]
    for key, title in (("dedup", "Deduplication"), ("splits", "Splits"), ("decontamination", "Decontamination"),
                       ("generation", "Generated text")):
        if key in manifest:
            lines += [f"## {title}", "", "```json", json.dumps(manifest[key], indent=1, sort_keys=True), "```", ""]
    if report:
        lines += ["## Build report", "", "```json", json.dumps(report, indent=1, sort_keys=True), "```", ""]
    lines += ["## Plots", "", "![counts](counts.png)", "", "![box sizes](box_sizes.png)", "",
              "![samples](samples.png)", "",
              "Boxes are absolute xyxy in the normalised image; questions refer to them as `{boxN}` and are rendered "
              "in the target model's syntax at export (`medlvr.corpus.qa.export`). Knowledge-only questions are tagged "
              "`knowledge_only`.", ""]
    (out_dir / "README.md").write_text("\n".join(lines))
    return out_dir / "README.md"

"""The corpus card, a Hugging Face dataset card: YAML header + Markdown + PNG plots describing a built shard set.

    <out>/card/README.md, counts.png, box_sizes.png, samples.png      the corpus card
    <out>/shards/README.md + the same plots                            the same card in the shard folder

The header (`license`, `task_categories`, `configs` with one `data_files` entry per split folder, named as the Hub
names splits: train / validation / test; `dataset_info.features` from the shard schema with the `image` column as
an `image`) makes `datasets.load_dataset("<out>/shards")` return the splits with decoded images, no casting by the
user, and lets the shard folder be uploaded to the Hub as it is.
The body: what the corpus is built from (real datasets, or the bundled synthetic sample: the manifest's
`synthetic_sample_datasets`, corpus/provenance.py), counts as Markdown tables, the format (the `{boxN}` placeholder
convention and the function that renders it), the licence and citation of every dataset really read (from the
catalog), the build's dedup / split / decontamination figures, and the plots.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.shards import IMAGE_COLUMN, MANIFEST_NAME, QA_SCHEMA
from medlvr.corpus.splits import SPLITS

PLOTS = ("counts.png", "box_sizes.png", "samples.png")
# Hub task categories of the pairs: grounded VQA (answers and boxes) with images in, text out
TASK_CATEGORIES = ["visual-question-answering", "image-text-to-text"]
_ARROW_DTYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.bool_(): "bool",
                 pa.float64(): "float64", pa.binary(): "binary"}
SYNTHETIC_LICENCE_NAME = "medlvr-synthetic-sample"  # the header's licence id of a corpus of synthetic samples only
RENDER_FUNCTION = "medlvr.corpus.qa.export.render_qwen"  # renders {boxN} placeholders (the card names it)


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
            for batch in pf.iter_batches(columns=["dataset", "boxes", IMAGE_COLUMN, "question_type", "modality"],
                                         batch_size=256):
                for r in batch.to_pylist():
                    if r["question_type"] == "grounding" and r["dataset"] not in samples and len(samples) < max_samples:
                        samples[r["dataset"]] = {"png": r[IMAGE_COLUMN], "boxes": r["boxes"],
                                                 "title": f"{r['dataset']} ({r['modality']})"}
    return np.asarray(areas), [samples[k] for k in sorted(samples)]


def hf_feature(t: pa.DataType) -> dict:
    """An Arrow type as a `dataset_info.features` entry of a dataset card (`{"dtype": ...}` or `{"list": ...}`)."""
    if pa.types.is_list(t):
        inner = hf_feature(t.value_type)
        return {"list": inner["dtype"] if set(inner) == {"dtype"} else inner}
    return {"dtype": _ARROW_DTYPES[t]}


def hf_features(schema: pa.Schema = QA_SCHEMA) -> list[dict]:
    """The shard schema as card features; the PNG bytes column is an `image` (decoded by `datasets`)."""
    return [{"name": f.name, **({"dtype": "image"} if f.name == IMAGE_COLUMN else hf_feature(f.type))}
            for f in schema]


def size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def card_header(manifest: dict) -> dict:
    """The YAML header: licences, task categories, and one config whose splits are the shard folders (named as the
    Hub names splits)."""
    split_dirs = sorted({Path(s["path"]).parts[0] for s in manifest["shards"]},
                        key=lambda d: SPLITS.index(d) if d in SPLITS else len(SPLITS))
    real, synthetic = source_datasets(manifest)
    return {
        "pretty_name": "MedLVR grounding corpus" + ("" if real else " (synthetic sample)"),
        # real data: the union of the source datasets' licences (table below), no single licence applies; synthetic
        # samples only: no third-party data, the card's body says what they are
        "license": "other",
        "license_name": "source-dataset-licences" if real else SYNTHETIC_LICENCE_NAME,
        "language": ["en"],
        "task_categories": TASK_CATEGORIES,
        "tags": ["medical", "visual-grounding", "bounding-boxes"] + (["synthetic"] if synthetic else []),
        "size_categories": [size_category(manifest["rows"])],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": d, "path": f"{d}/*.parquet"} for d in split_dirs]}],
        "dataset_info": {"features": hf_features(), "config_name": "default"},
    }


def _table(headers: list[str], rows: list[list], align: str = "") -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(headers) + " |", "|" + (align or "---|" * len(headers))]
    return out + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows] + [""]


def _counts_table(title: str, key: str, counts: dict) -> list[str]:
    total = sum(counts.values()) or 1
    rows = [[k, v, f"{100 * v / total:.1f}"] for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return [f"### {title}", ""] + _table([key, "pairs", "%"], rows, "---|---:|---:|")


def source_datasets(manifest: dict) -> tuple[list[str], list[str]]:
    """(datasets really read, datasets that were the bundled synthetic sample), each sorted, over the datasets with
    pairs in this build (the manifest's `synthetic_sample_datasets`, written by the shards step)."""
    built = set(manifest["counts"]["dataset"])
    synthetic = built & set(manifest.get("synthetic_sample_datasets", []))
    return sorted(built - synthetic), sorted(synthetic)


def _sources(manifest: dict) -> list[str]:
    """Licence and citation of every dataset really read (with pairs in this build); the synthetic stand-ins apart,
    without licences (none of their data comes from the dataset they imitate)."""
    catalog = load_catalog()
    per_dataset = manifest["counts"]["dataset"]
    real, synthetic = source_datasets(manifest)
    out = []
    if real:
        rows = [[f"[{catalog[ds].name}]({catalog[ds].homepage})" if catalog[ds].homepage else catalog[ds].name,
                 f"`{ds}`", catalog[ds].modality, per_dataset[ds], catalog[ds].licence, catalog[ds].citation]
                for ds in real]
        out += ["## Source datasets, licences and citations", "",
                "Every pair of these datasets stays under its licence: check each before you redistribute or use the "
                "corpus commercially. Cite the datasets you use.", ""]
        out += _table(["dataset", "id", "modality", "pairs", "licence", "citation"], rows)
    if synthetic:
        rows = [[f"`{ds}`", catalog[ds].name, catalog[ds].modality, per_dataset[ds]] for ds in synthetic]
        out += ["## Synthetic sample datasets", "",
                "Generated by MedLVR's sample writers (`medlvr sample-data`, `medlvr.corpus.sample_data`): miniature "
                "stand-ins in each dataset's native layout and file format, with generated images and annotations. "
                "No image, annotation or text of the public dataset they imitate was read, so none of its licence or "
                "citation applies; they show the corpus format and exercise the pipeline, and say nothing about "
                "medicine.", ""]
        out += _table(["id", "layout of", "modality", "pairs"], rows)
    return out


def _inline(value) -> str:
    """A figure for a table cell: a mapping as "key value, ...", a list comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _build_figures(manifest: dict, report: dict | None) -> list[str]:
    out = ["## How it was built", ""]
    dedup, splits, decon = manifest.get("dedup", {}), manifest.get("splits", {}), manifest.get("decontamination", {})
    facts = []
    for label, value in (("images hashed for deduplication", dedup.get("images")),
                         ("duplicate groups (exact or near)", dedup.get("groups_with_duplicates")),
                         ("images in duplicate groups", dedup.get("images_in_duplicate_groups")),
                         ("split components (patients joined with their duplicate groups)", splits.get("components")),
                         ("images per split", splits.get("per_split")),
                         ("benchmarks decontaminated against (images matched)", decon.get("matched")),
                         ("corpus images removed by decontamination", decon.get("removed_images"))):
        if value not in (None, "", {}, []):
            facts.append([label, _inline(value)])
    if report and report.get("skipped"):
        facts.append(["catalog datasets not built", _inline(report["skipped"])])
    out += _table(["", "value"], facts) if facts else []
    out += ["Splits are patient- and duplicate-group-disjoint; the full machine-readable figures are in the shard "
            f"manifest (`{MANIFEST_NAME}`).", ""]
    return out


def card_markdown(manifest: dict, report: dict | None = None) -> str:
    c = manifest["counts"]
    real, synthetic = source_datasets(manifest)
    if not real:
        origin = (f"built by `medlvr build-corpus` from the **bundled synthetic sample data**: stand-ins for "
                  f"{len(synthetic)} catalog datasets, generated in each dataset's native layout (listed below). "
                  "No data of a public medical imaging dataset is in it.")
    elif synthetic:
        origin = (f"built by `medlvr build-corpus` from {len(real)} public medical imaging datasets and the bundled "
                  f"**synthetic sample** stand-ins for {len(synthetic)} more (both listed below).")
    else:
        origin = f"built by `medlvr build-corpus` from {len(real)} public medical imaging datasets (listed below)."
    lines = ["---", yaml.safe_dump(card_header(manifest), sort_keys=False, allow_unicode=True).strip(), "---", "",
             "# MedLVR grounding corpus" + ("" if real else " (synthetic sample)"), "",
             f"{manifest['rows']} question–answer pairs with boxes in {len(manifest['shards'])} Parquet shards "
             f"(schema version {manifest['schema_version']}), {origin}", "",
             "```python", "import datasets", "", 'corpus = datasets.load_dataset("path/to/shards")  # this folder',
             f'corpus["train"][0]["{IMAGE_COLUMN}"]  # a PIL image; boxes are xyxy pixels in it',
             '# splits: ' + ", ".join(f'corpus["{d}"]' for d in SPLITS), "```", "",
             "## Format", "",
             f"Columns: {', '.join(f'`{n}`' for n in QA_SCHEMA.names)}. Boxes (`boxes`) are absolute xyxy pixels in "
             f"the normalised image (`{IMAGE_COLUMN}`, `width` x `height`). Questions and options refer to boxes by "
             "placeholder: `{box0}` is `boxes[0]`, `{box1}` is `boxes[1]`, and so on (e.g. \"What is shown in the "
             "region {box0}?\"). The placeholders are stored, not rendered: a model sees a box in the coordinates of "
             "the image its processor resized, so the text depends on the model and its pixel budget, and training "
             "needs the box indices (the correct option's boxes are the ROI target). "
             f"`{RENDER_FUNCTION}(row, min_pixels, max_pixels)` renders a row into Qwen2.5-VL text (question with "
             "options, and answer), with the same pixel budget as the processor. Grounding answers (`answer_is_box`) "
             "are the boxes themselves. Knowledge-only questions are tagged `knowledge_only`.", "",
             "## Counts", ""]
    lines += _counts_table("Pairs per split", "split", c["split"])
    for key, title in (("modality", "Pairs per modality"), ("question_type", "Pairs per question type"),
                       ("dataset", "Pairs per dataset")):
        lines += _counts_table(title, key.replace("_", " "), c[key])
    lines += _sources(manifest)
    lines += _build_figures(manifest, report)
    lines += ["## Plots", "", "![counts](counts.png)", "", "![box sizes](box_sizes.png)", "",
              "![samples](samples.png)", ""]
    return "\n".join(lines)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_card(shard_dir: Path, out_dir: Path, report: dict | None = None) -> Path:
    """The card in `out_dir` and, with its plots, in `shard_dir` (module docstring); returns out_dir/README.md."""
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((shard_dir / MANIFEST_NAME).read_text())
    areas, samples = collect_from_shards(shard_dir)
    plot_counts(manifest, out_dir / "counts.png")
    plot_box_sizes(areas, out_dir / "box_sizes.png")
    plot_samples(samples, out_dir / "samples.png")
    text = card_markdown(manifest, report)
    _write_text_atomic(out_dir / "README.md", text)
    for name in PLOTS:  # the shard folder is what gets uploaded: the card's images travel with it
        (shard_dir / name).write_bytes((out_dir / name).read_bytes())
    _write_text_atomic(shard_dir / "README.md", text)
    return out_dir / "README.md"

"""Materialisation metadata helpers: preview tables (a few rows, cells capped) and thumbnail grids with boxes.

Metadata stays small and bounded: a thumbnail grid is a PNG written to the corpus storage (`layout.preview`) and
linked (a path, or a URL for remote storage), never embedded in the event; Dagster keeps every event's metadata in
its event log, so embedding ~200 KB per partition grew the history by tens of MB per main job. Reads Parquet with
pyarrow, a few rows only."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from medlvr.corpus.shards import MANIFEST_NAME


def head(path: Path, columns: list[str], n: int = 5) -> list[dict[str, Any]]:
    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows == 0:
        return []
    return next(pf.iter_batches(batch_size=n, columns=columns)).to_pylist()


def md_table(rows: list[dict[str, Any]], max_chars: int = 60) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("_no rows_")
    cols = list(rows[0])

    def cell(v: Any) -> str:
        s = v if isinstance(v, str) else json.dumps(v, default=str)
        s = s.replace("|", "\\|").replace("\n", " ")
        return s if len(s) <= max_chars else s[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(counts: dict[str, int], key: str, value: str = "count") -> dg.MetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(key, "string"), dg.TableColumn(value, "int")])
    return dg.MetadataValue.table([dg.TableRecord({key: k, value: int(v)}) for k, v in counts.items()], schema=schema)


def thumbnail_grid(items: list[tuple[bytes, list[list[float]], str]], tile: int = 160, cols: int = 4) -> bytes:
    """items: (png bytes, xyxy boxes in that image, caption) -> one PNG with boxes drawn in yellow."""
    from PIL import Image, ImageDraw

    n = max(1, len(items))
    rows = (n + cols - 1) // cols
    grid = Image.new("RGB", (cols * tile, rows * (tile + 14)), "black")
    draw = ImageDraw.Draw(grid)
    for i, (png, boxes, caption) in enumerate(items):
        img = Image.open(io.BytesIO(png)).convert("RGB")
        s = tile / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))))
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + 14)
        grid.paste(img, (x0, y0))
        for b in boxes:
            draw.rectangle([x0 + b[0] * s, y0 + b[1] * s, x0 + b[2] * s, y0 + b[3] * s], outline="yellow", width=2)
        draw.text((x0 + 2, y0 + tile), caption[:26], fill="white")
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def ingest_thumbnails(ingest_dir: Path, n: int = 8) -> bytes | None:
    """PNG grid of the first `n` images that have ROIs, with their boxes (None: no image has one)."""
    boxes: dict[str, list] = {}
    labels: dict[str, list] = {}
    for r in pq.read_table(ingest_dir / "rois.parquet", columns=["image_id", "box", "label"]).to_pylist():
        boxes.setdefault(r["image_id"], []).append(r["box"])
        labels.setdefault(r["image_id"], []).append(r["label"])
    items = []
    pf = pq.ParquetFile(ingest_dir / "images.parquet")
    for batch in pf.iter_batches(batch_size=32, columns=["image_id", "png", "suffix"]):
        for r in batch.to_pylist():
            if r["image_id"] in boxes and len(items) < n:
                items.append((r["png"], boxes[r["image_id"]], ", ".join(sorted(set(labels[r["image_id"]])))))
        if len(items) >= n:
            break
    return thumbnail_grid(items) if items else None


def qa_thumbnails(qa_path: Path, images_path: Path, n: int = 8) -> bytes | None:
    """PNG grid of grounding pairs (question -> boxes) drawn on their images (None: no pair has boxes)."""
    pairs = {}
    for batch in pq.ParquetFile(qa_path).iter_batches(batch_size=1024, columns=["image_id", "question_type",
                                                                                 "boxes", "answer"]):
        for r in batch.to_pylist():
            if r["boxes"] and r["image_id"] not in pairs and len(pairs) < n:
                pairs[r["image_id"]] = (r["boxes"], f"{r['question_type']}: {r['answer']}")
        if len(pairs) >= n:
            break
    items = []
    for batch in pq.ParquetFile(images_path).iter_batches(batch_size=32, columns=["image_id", "png"]):
        for r in batch.to_pylist():
            if r["image_id"] in pairs:
                items.append((r["png"], *pairs[r["image_id"]]))
    return thumbnail_grid(items) if items else None


def manifest_path(shard_dir: Path) -> Path:
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no shard manifest in {shard_dir}")
    return path


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    return json.loads(manifest_path(shard_dir).read_text())

"""Materialisation metadata helpers: preview tables (a few rows, cells capped), thumbnail grids with boxes, and what
the Dagster UI renders inline: a contact sheet image and Markdown excerpts of the card and the report.

Metadata stays small and bounded, because Dagster keeps every event's metadata in its event log (embedding the
full ~200 KB grids per partition grew the history by tens of MB per main job):

* the full thumbnail grid is a PNG written to the corpus storage (`layout.preview`) and linked (a path, or a URL
  for remote storage);
* next to it, a contact sheet the UI shows: a Markdown image with a `data:image/jpeg` URL (the UI's Markdown
  renderer allows `data:` image sources; external or relative files it cannot reach), at most
  `CONTACT_SHEET_MAX_BYTES` of JPEG (tiles shrink and quality drops until it fits);
* Markdown excerpts (`markdown_excerpt`) of at most `MARKDOWN_MAX_CHARS`, cut only between sections or blocks
  (a paragraph, a whole table), never inside a link or a table row, with relative links (which lead nowhere in
  the UI) turned into plain text.

Reads Parquet with pyarrow, a few rows only."""

from __future__ import annotations

import base64
import io
import json
import re
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


CONTACT_SHEET_MAX_BYTES = 12_000  # JPEG bytes of one contact sheet (its data: URL is about 4/3 of that)
MARKDOWN_MAX_CHARS = 12_000  # one Markdown excerpt (card, report tables)
Item = tuple[bytes, list[list[float]], str]  # (png bytes, xyxy boxes in that image, caption)


def _grid(items: list[Item], tile: int, cols: int, captions: bool = True):
    """items -> one RGB PIL image, a tile per item with its boxes in yellow (and its caption under it)."""
    from PIL import Image, ImageDraw

    n = max(1, len(items))
    rows = (n + cols - 1) // cols
    cap = 14 if captions else 0
    grid = Image.new("RGB", (min(n, cols) * tile, rows * (tile + cap)), "black")
    draw = ImageDraw.Draw(grid)
    for i, (png, boxes, caption) in enumerate(items):
        img = Image.open(io.BytesIO(png)).convert("RGB")
        s = tile / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))))
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + cap)
        grid.paste(img, (x0, y0))
        for b in boxes:
            draw.rectangle([x0 + b[0] * s, y0 + b[1] * s, x0 + b[2] * s, y0 + b[3] * s], outline="yellow",
                           width=max(1, tile // 64))
        if captions:
            draw.text((x0 + 2, y0 + tile), caption[: tile // 6], fill="white")
    return grid


def thumbnail_grid(items: list[Item], tile: int = 160, cols: int = 4) -> bytes:
    """items: (png bytes, xyxy boxes in that image, caption) -> one PNG with boxes drawn in yellow."""
    buf = io.BytesIO()
    _grid(items, tile, cols).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def fit_jpeg(image, max_bytes: int = CONTACT_SHEET_MAX_BYTES) -> bytes | None:
    """A PIL image as a JPEG of at most `max_bytes`: the image as it is at quality 80, then scaled down and at lower
    quality until it fits (None when not even a 3/8 scale at quality 40 fits)."""
    for scale, quality in ((1.0, 80), (0.875, 70), (0.75, 60), (0.625, 50), (0.5, 45), (0.375, 40)):
        img = image if scale == 1.0 else image.resize((max(1, round(image.width * scale)),
                                                       max(1, round(image.height * scale))))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
        if buf.tell() <= max_bytes:
            return buf.getvalue()
    return None


def contact_sheet(items: list[Item], max_bytes: int = CONTACT_SHEET_MAX_BYTES, cols: int = 4) -> bytes | None:
    """A small JPEG of the items as 128-px tiles with their boxes (no captions: the linked grid has them), at most
    `max_bytes` (`fit_jpeg`; with fewer items if even the smallest scale is too big). None without items."""
    for n in range(len(items), 0, -1):
        jpeg = fit_jpeg(_grid(items[:n], 128, cols, captions=False), max_bytes)
        if jpeg is not None:
            return jpeg
    return None


def sample_sheet(png_path: Path, max_bytes: int = CONTACT_SHEET_MAX_BYTES) -> bytes | None:
    """An existing PNG (the card's samples.png) as a JPEG of at most `max_bytes`, 640 px wide at most."""
    from PIL import Image

    with Image.open(png_path) as im:
        im = im.convert("RGB")
        if im.width > 640:
            im = im.resize((640, max(1, round(im.height * 640 / im.width))))
        return fit_jpeg(im, max_bytes)


def md_image(jpeg: bytes | None, alt: str) -> dg.MetadataValue:
    """A JPEG as a Markdown image the Dagster UI renders inline (a data: URL), or a line saying there is none."""
    if jpeg is None:
        return dg.MetadataValue.md("_no image with boxes_")
    alt = re.sub(r"[\[\]\n]", " ", alt)
    return dg.MetadataValue.md(f"![{alt}](data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')})")


def ingest_items(ingest_dir: Path, n: int = 8) -> list[Item]:
    """The first `n` images that have ROIs, with their boxes and labels."""
    boxes: dict[str, list] = {}
    labels: dict[str, list] = {}
    for r in pq.read_table(ingest_dir / "rois.parquet", columns=["image_id", "box", "label"]).to_pylist():
        boxes.setdefault(r["image_id"], []).append(r["box"])
        labels.setdefault(r["image_id"], []).append(r["label"])
    items: list[Item] = []
    pf = pq.ParquetFile(ingest_dir / "images.parquet")
    for batch in pf.iter_batches(batch_size=32, columns=["image_id", "png", "suffix"]):
        for r in batch.to_pylist():
            if r["image_id"] in boxes and len(items) < n:
                items.append((r["png"], boxes[r["image_id"]], ", ".join(sorted(set(labels[r["image_id"]])))))
        if len(items) >= n:
            break
    return items


def qa_items(qa_path: Path, images_path: Path, n: int = 8) -> list[Item]:
    """Grounding pairs (question -> boxes) on their images: the first `n` images with a boxed pair."""
    pairs = {}
    for batch in pq.ParquetFile(qa_path).iter_batches(batch_size=1024, columns=["image_id", "question_type",
                                                                                 "boxes", "answer"]):
        for r in batch.to_pylist():
            if r["boxes"] and r["image_id"] not in pairs and len(pairs) < n:
                pairs[r["image_id"]] = (r["boxes"], f"{r['question_type']}: {r['answer']}")
        if len(pairs) >= n:
            break
    items: list[Item] = []
    for batch in pq.ParquetFile(images_path).iter_batches(batch_size=32, columns=["image_id", "png"]):
        for r in batch.to_pylist():
            if r["image_id"] in pairs:
                items.append((r["png"], *pairs[r["image_id"]]))
    return items


# ------------------------------------------------------------------------------------------- Markdown excerpts
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]*)\)")
_ABSOLUTE = re.compile(r"^(https?:|mailto:|data:|#)")


def drop_relative_links(text: str) -> str:
    """Relative links and images (a file next to the Markdown: the UI cannot open it) become plain text: a link its
    label, an image its file name. Absolute http(s)/mailto/data links and #anchors stay."""
    def sub(m: re.Match) -> str:
        bang, label, href = m.groups()
        if _ABSOLUTE.match(href):
            return m.group(0)
        return f"(image `{href}`, a file next to the document)" if bang else label

    return _LINK.sub(sub, text)


def _blocks(section: str) -> list[str]:
    """A section's blocks: paragraphs, lists and whole tables (blank-line separated), fenced code kept whole."""
    out, cur, fenced = [], [], False
    for line in section.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        if not line.strip() and not fenced:
            if cur:
                out.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if cur:
        out.append("\n".join(cur))
    return out


def markdown_excerpt(text: str, max_chars: int = MARKDOWN_MAX_CHARS, where: str = "") -> str:
    """`text` (Markdown; a YAML front matter is dropped) within `max_chars`: whole `## ` sections while they fit,
    then whole blocks of the next one; relative links become plain text (`drop_relative_links`). When something is
    left out, a last line names it and where the whole document is (`where`, e.g. its path, shown as code)."""
    body = drop_relative_links(_FRONT_MATTER.sub("", text, count=1)).strip("\n")
    sections = re.split(r"\n(?=## )", body)
    budget = max_chars - 240 - len(where)  # room for the last line
    out: list[str] = []
    used, left = 0, []
    for i, sec in enumerate(sections):
        if used + len(sec) + 2 <= budget:
            out.append(sec)
            used += len(sec) + 2
            continue
        for block in _blocks(sec):
            if used + len(block) + 2 > budget:
                break
            out.append(block)
            used += len(block) + 2
        left = [s.split("\n", 1)[0].lstrip("#").strip() for s in sections[i:]]
        break
    excerpt = "\n\n".join(out)
    if left:
        names = ", ".join(left) if len(", ".join(left)) <= 120 else f"{left[0][:60]} and {len(left) - 1} more sections"
        excerpt += (f"\n\n*Not shown here (limit {max_chars} characters): {names}"
                    + (f"; the whole document: `{where}`*" if where else "*"))
    return excerpt


def manifest_path(shard_dir: Path) -> Path:
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no shard manifest in {shard_dir}")
    return path


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    return json.loads(manifest_path(shard_dir).read_text())

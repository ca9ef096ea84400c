"""Helpers the benchmark sample writers share: a small deterministic image, an HF-style parquet file, a
reproducible zip. The writers themselves live in their benchmark's module and are registered with it
(`medlvr.corpus.evalsets.registry.write_benchmark_samples` runs them)."""

from __future__ import annotations

import io
import json
from pathlib import Path


def image_bytes(seed: int, fmt: str = "PNG", size: int = 32) -> bytes:
    """A small deterministic grey image with a bright square whose place depends on `seed`."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (size, size), 20 + (seed * 37) % 60)
    x, y = (seed * 7) % (size // 2), (seed * 11) % (size // 2)
    ImageDraw.Draw(im).rectangle([x, y, x + size // 3, y + size // 3], fill=200)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def write_hf_parquet(path: Path, columns: dict[str, list], image_columns: tuple[str, ...] = ()) -> None:
    """A parquet file as `datasets` writes it: Image columns as struct<bytes: binary, path: string> (null where
    absent) and the features in the `huggingface` schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    arrays, features = {}, {}
    for name, values in columns.items():
        if name in image_columns:
            arrays[name] = pa.array(values, type=img_type)
            features[name] = {"_type": "Image"}
        else:
            arrays[name] = pa.array(values, type=pa.string())
            features[name] = {"dtype": "string", "_type": "Value"}
    table = pa.table(arrays)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path)


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """A zip with fixed timestamps so that the bytes are reproducible."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), members[name])

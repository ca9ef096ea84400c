"""Parquet schemas of the ingestion outputs and a streaming, atomic writer for one dataset.

Layout of an ingest output directory (one folder per dataset, replaced atomically on rebuild):
    <out>/<dataset_id>/images.parquet    one row per normalised 2-D image (PNG bytes inline)
    <out>/<dataset_id>/rois.parquet      one row per ROI, boxes in the normalised image
    <out>/<dataset_id>/rejects.parquet   one row per rejected record / image / ROI, with stage and reason
    <out>/<dataset_id>/summary.json      counts that reconcile: records_in == records_out + records_rejected
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 2  # 2: source_object in rois and rejects

IMAGES_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),  # sha1 of the normalised pixels (shape + bytes)
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("modality", pa.string(), nullable=False),
    pa.field("body_region", pa.string()),
    pa.field("source_path", pa.string(), nullable=False),  # relative to the dataset root
    pa.field("suffix", pa.string()),  # slice / frame / sequence within the source ("" for plain 2-D files)
    pa.field("record_key", pa.string(), nullable=False),
    pa.field("patient_key", pa.string(), nullable=False),  # salted hash, never the raw identifier
    pa.field("official_split", pa.string()),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("channels", pa.int8(), nullable=False),
    pa.field("orig_width", pa.int32(), nullable=False),
    pa.field("orig_height", pa.int32(), nullable=False),
    pa.field("scale_x", pa.float64(), nullable=False),  # normalised = original * scale + pad
    pa.field("scale_y", pa.float64(), nullable=False),
    pa.field("pad", pa.list_(pa.int32(), 4), nullable=False),  # left, top, right, bottom
    pa.field("spacing_mm", pa.list_(pa.float64())),  # original pixel spacing (row, col) or (z, y, x)
    pa.field("slice_axis", pa.int16()),
    pa.field("slice_index", pa.int32()),
    pa.field("intensity", pa.string(), nullable=False),
    pa.field("window_low", pa.float64()),
    pa.field("window_high", pa.float64()),
    pa.field("window_name", pa.string()),
    pa.field("attributes", pa.string()),  # JSON of whitelisted facts
    pa.field("png", pa.binary(), nullable=False),
], metadata={"medlvr_schema_version": str(SCHEMA_VERSION), "table": "images"})

ROIS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("roi_index", pa.int32(), nullable=False),
    pa.field("label", pa.string(), nullable=False),  # raw label as the dataset names it
    pa.field("concept_id", pa.string(), nullable=False),  # knowledge-graph concept
    pa.field("box", pa.list_(pa.float64(), 4), nullable=False),  # xyxy in the normalised image
    pa.field("box_orig", pa.list_(pa.float64(), 4), nullable=False),  # xyxy in original pixels (after clipping)
    pa.field("clipped", pa.bool_(), nullable=False),
    pa.field("origin", pa.string(), nullable=False),  # box | mask | polygon
    pa.field("instance", pa.int32(), nullable=False),  # the source object's index in its source, not among kept boxes
    # the annotation object the box comes from: relative file + position, e.g. "labels.csv#row=12",
    # "case_00002/segmentation.nii.gz#label=tumor/component=1" (docs/datasets.md, object accounting)
    pa.field("source_object", pa.string(), nullable=False),
    pa.field("area_px", pa.float64(), nullable=False),  # in the normalised image
    pa.field("area_mm2", pa.float64()),
    pa.field("parent_label", pa.string()),
    pa.field("attributes", pa.string()),
], metadata={"medlvr_schema_version": str(SCHEMA_VERSION), "table": "rois"})

REJECTS_SCHEMA = pa.schema([
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("source_path", pa.string(), nullable=False),
    pa.field("record_key", pa.string(), nullable=False),
    pa.field("level", pa.string(), nullable=False),  # record | image | roi
    pa.field("stage", pa.string(), nullable=False),  # discover | load | normalise | roi | dedup
    pa.field("reason", pa.string(), nullable=False),
    pa.field("source_object", pa.string(), nullable=False),  # the annotation object of an ROI row, else ""
], metadata={"medlvr_schema_version": str(SCHEMA_VERSION), "table": "rejects"})


def parquet_options(schema: pa.Schema) -> dict:
    """zstd for every column except encoded images: PNG bytes do not compress further, and neither dictionary
    encoding nor zstd should spend time on them."""
    binary = [f.name for f in schema if pa.types.is_binary(f.type)]
    others = [f.name for f in schema if f.name not in binary]
    # min/max statistics of image bytes are useless and cost 10x the rest of the write
    return {"compression": {f.name: ("none" if f.name in binary else "zstd") for f in schema},
            "use_dictionary": others, "write_statistics": others}


# Publishing a folder. `final` is replaced by a complete temporary sibling in ONE atomic step where the OS allows:
# Linux renameat2(RENAME_EXCHANGE) swaps the two directory entries, so a reader (or a kill -9) sees either the old
# complete folder or the new one, never none; the old version then sits under the temporary name and is removed.
# The alternative, a versioned folder behind a symlink swapped with os.replace, was not taken: `final` would stop
# being a real directory, and Python 3.11's Path.rglob / os.walk do not descend into a symlinked directory (the
# Dagster storage sync walks the corpus folder that way) while HF `datasets` would cache by the resolved version
# path. Where renameat2 is missing (not glibc, not Linux) or the file system refuses the exchange, the switch is
# two renames (final -> .old-*, tmp -> final), and `recover_published` at the next start restores `final` from
# the `.old-*` copy a kill between them left. Leftovers are named `.<name>.tmp-<pid>-<hex8>` and
# `.<name>.old-<pid>-<hex8>`: only names of exactly that form are ever removed, and only when the process that made
# them is gone (another live writer's folder is left alone).
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def leftover_name(final: Path, kind: str) -> Path:
    """A fresh `.<name>.tmp-<pid>-<hex8>` (kind "tmp") or `.<name>.old-...` sibling of `final`."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier, failed publish in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries; False where the OS or file system cannot (caller falls back)."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot swap {b.name} with its new version: {os.strerror(err)}")


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def recover_published(final: Path, keep: Path | None = None) -> list[str]:
    """Put back `final` if a kill between the two renames of the fallback left only its `.old-*` copy, then remove
    the dead leftovers of earlier publishes of `final` (never `keep`, the folder being written now). Returns what
    was done, one line each (for logs and tests)."""
    final = Path(final)
    done: list[str] = []
    if not final.parent.is_dir():
        return done
    stale: dict[str, list[Path]] = {"tmp": [], "old": []}
    for p in final.parent.iterdir():
        m = _LEFTOVER.fullmatch(p.name)
        if m and m["name"] == final.name and p != keep and not _owner_alive(int(m["pid"])):
            stale[m["kind"]].append(p)
    if not final.exists() and stale["old"]:
        newest = max(stale["old"], key=lambda p: p.stat().st_mtime)
        os.replace(newest, final)
        stale["old"].remove(newest)
        done.append(f"restored {final.name} from {newest.name}")
    for p in stale["tmp"] + stale["old"]:
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p.name}")
    return done


def publish_dir(tmp: Path, final: Path) -> Path:
    """Replace `final` by the complete folder `tmp` (see the comment above: one atomic exchange, else two renames
    with recovery at the next start); the old version is removed afterwards."""
    tmp, final = Path(tmp), Path(final)
    recover_published(final, keep=tmp)
    if not final.exists():
        os.replace(tmp, final)  # nothing to replace: a plain rename is already atomic
        return final
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old version; a kill here leaves a dead .tmp-* leftover
        return final
    old = leftover_name(final, "old")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def escape_undecodable(text: str) -> str:
    """`text` with the bytes of a file name that is not valid UTF-8 written as `\\xNN`.

    Python reads such a name (Linux allows any bytes but / and NUL) as lone surrogates (PEP 383
    surrogateescape), which Parquet's UTF-8 strings cannot hold: writing one raised UnicodeEncodeError and lost
    the whole dataset. The record is kept, not rejected: its pixels were read through the real name, and only
    the provenance columns (source_path, record_key, reasons) carry the escaped spelling, e.g.
    `images/case_\\xff.png`. The escape is one-way (a name that really contains a backslash followed by
    `xff` reads the same), which is fine for provenance: no later step reopens a file by these columns."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _Table:
    """Buffers rows and writes a row group every `flush_rows` rows or `flush_bytes` of binary data (encoded
    images), whichever comes first, so memory stays flat whatever the dataset size."""

    def __init__(self, path: Path, schema: pa.Schema, flush_rows: int, flush_bytes: int = 16 << 20):
        self.path, self.schema, self.flush_rows, self.flush_bytes = path, schema, flush_rows, flush_bytes
        self.binary = [f.name for f in schema if pa.types.is_binary(f.type)]
        self.strings = [f.name for f in schema if pa.types.is_string(f.type)]
        self.rows: list[dict[str, Any]] = []
        self.buffered = 0
        self.count = 0
        self.writer = pq.ParquetWriter(path, schema, **parquet_options(schema))

    def add(self, row: dict[str, Any]) -> None:
        for c in self.strings:  # a non-UTF-8 file name in any text column: escaped, never a lost dataset
            if isinstance(row.get(c), str):
                row[c] = escape_undecodable(row[c])
        self.rows.append(row)
        self.count += 1
        self.buffered += sum(len(row[c]) for c in self.binary)
        if len(self.rows) >= self.flush_rows or self.buffered >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows, self.buffered = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


class DatasetWriter:
    """Writes one dataset's tables into a hidden temporary folder and publishes it atomically (`publish_dir`).

    A reader of `<out>/<id>` sees either the previous complete version or the new complete one, never a
    half-written table. On error the temporary folder is removed and the previous version stays.
    """

    def __init__(self, out_dir: Path, dataset_id: str, flush_rows: int = 32):
        self.out_dir = Path(out_dir)
        self.final = self.out_dir / dataset_id
        self.tmp = leftover_name(self.final, "tmp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        recover_published(self.final)  # a kill in an earlier publish: restore the old version, drop leftovers
        self.tmp.mkdir()
        self.images = _Table(self.tmp / "images.parquet", IMAGES_SCHEMA, flush_rows, flush_bytes=8 << 20)
        self.rois = _Table(self.tmp / "rois.parquet", ROIS_SCHEMA, flush_rows * 8)
        self.rejects = _Table(self.tmp / "rejects.parquet", REJECTS_SCHEMA, flush_rows * 8)

    def commit(self, summary: dict[str, Any]) -> Path:
        for t in (self.images, self.rois, self.rejects):
            t.close()
        (self.tmp / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        return publish_dir(self.tmp, self.final)

    def abort(self) -> None:
        for t in (self.images, self.rois, self.rejects):
            try:
                t.writer.close()
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
